"""Checks before a training starts: fail fast on what can never succeed, warn on what may wait.

:func:`preflight` raises :class:`PreflightError` when

- one worker (``ray.cpus_per_worker`` CPUs, a GPU with ``ray.use_gpu``, ``resources_per_worker``)
  needs more than any node of a fixed-size cluster has (or any node type listed as one its
  autoscaler can start),
- a fixed-size cluster cannot place the minimum number of workers,
- the storage path is not writable, or the MLflow tracking store does not answer,
- on a node that can run a worker, ``data_dir`` is not readable (or holds other data than the
  driver's), ``ray.storage_path`` is not the folder the driver sees, or torch/torchvision
  differ from the driver's (checked by a tiny task pinned to each such node).

Whether the cluster can grow is read from Ray's public autoscaler status
(:func:`cluster_scaling`: ``ray.autoscaler.v2.sdk.get_cluster_status``, what ``ray status``
shows), and only when the nodes running now cannot hold every worker. It is *fixed* when an
autoscaler reports on it and every node was started by hand (no node type), *autoscaling* when
the autoscaler is starting nodes or runs nodes of its node types, and *unknown* when the status
cannot be read or no autoscaler has reported (Ray's autoscaler v1, or a cluster started by hand
without ``RAY_enable_autoscaler_v2=1``). On an autoscaling cluster too few workers fitting *now*
is only a warning: Ray Train asks the autoscaler and waits. An unknown cluster is treated the
same, with a warning that says what could not be determined. Ray does not publish an
autoscaler's node types or their maximum counts (ray-project/ray#37838), so a request that no
node type could ever hold fails early only on a fixed cluster; on an autoscaling one Ray Train
itself refuses workers the autoscaler's configured maximum cannot hold when it starts them.
Nodes that join later are not checked here; the training loop checks ``data_dir`` again when
it starts on them.

What "the data is readable on a node" means is :func:`check_data_files`, run on each node; a
caller may pass another check (``preflight(..., data_check=...)``, any picklable function of a
:class:`DataManifest` returning the problems found), e.g. to stand in for a node without the
data on a one-machine test cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.params import Params

__all__ = ["AUTOSCALING", "FIXED", "UNKNOWN", "DataCheck", "DataManifest", "NodeShape", "PreflightError", "Scaling",
           "check_capacity", "check_cluster_capacity", "check_data_files", "cluster_scaling", "live_nodes", "preflight",
           "read_scaling", "worker_request"]

logger = logging.getLogger(__name__)

NODE_CHECK_TIMEOUT_S = 300.0  # the first task on a node also sets up the runtime environment
_SAMPLE_IMAGES = 3             # image files per split checked on every node
AUTOSCALER_REPORT_WAIT_S = 15.0  # an autoscaler reports every 5 s (AUTOSCALER_UPDATE_INTERVAL_S); a new one takes longer
STATUS_TIMEOUT_S = 10            # one request for the autoscaler status


class PreflightError(RuntimeError):
    """The cluster, storage or tracking server cannot run this training; raised before it starts."""


@dataclass(frozen=True)
class NodeShape:
    """The resources of a live node or of a node type the autoscaler can start."""

    name: str
    resources: dict[str, float]
    alive: bool = True
    max_count: int = 1          # autoscaler node types: how many may run (-1: unlimited)
    node_id: str | None = None
    ip: str | None = None


FIXED, AUTOSCALING, UNKNOWN = "fixed", "autoscaling", "unknown"


@dataclass(frozen=True)
class Scaling:
    """Whether the cluster can start more nodes (:data:`FIXED`, :data:`AUTOSCALING` or :data:`UNKNOWN`),
    and what in the autoscaler status says so (or why it could not tell)."""

    state: str
    reason: str = ""


def worker_request(params: Params) -> dict[str, float]:
    """Resources of one training worker."""
    rp = params.ray
    out = {"CPU": float(rp.cpus_per_worker), **{k: float(v) for k, v in rp.resources_per_worker.items()}}
    if rp.use_gpu:
        out["GPU"] = out.get("GPU", 1.0)
    return {k: v for k, v in out.items() if v > 0}


def workers_fitting(request: dict[str, float], resources: dict[str, float]) -> int:
    """How many workers of ``request`` fit into ``resources`` (whole workers)."""
    return min((math.floor(resources.get(k, 0.0) / v + 1e-9) for k, v in request.items()), default=0)


def check_capacity(request: dict[str, float], min_workers: int, max_workers: int,
                   shapes: list[NodeShape], scaling: Scaling | None = None) -> list[str]:
    """Decide whether ``min_workers``..``max_workers`` workers of ``request`` can run on ``shapes``.

    ``shapes`` are the live nodes and, where they are known, node types the autoscaler can start
    (``alive=False``); ``scaling`` says whether the cluster can grow (default: it can exactly when
    node types are listed). Returns warnings to show (Ray Train will wait for resources); raises
    :class:`PreflightError` when the request can never be placed.
    """
    alive = [s for s in shapes if s.alive]
    scalable = [s for s in shapes if not s.alive and s.max_count != 0]
    scaling = scaling or Scaling(AUTOSCALING if scalable else FIXED)
    grows = bool(scalable) or scaling.state != FIXED
    asked = ", ".join(f"{v:g} {k}" for k, v in request.items())
    if not any(workers_fitting(request, s.resources) >= 1 for s in alive + scalable):
        if grows and not scalable:  # the node types are not known: one of them may hold it
            return [_growing(scaling, f"no node running now can hold one worker ({asked}); Ray Train waits for the "
                                      f"autoscaler to start one that can",
                             "lower ray.cpus_per_worker / ray.resources_per_worker or set ray.use_gpu=false")]
        largest = ", ".join(sorted({_describe(s.resources, request) for s in alive + scalable})) or "no nodes"
        raise PreflightError(
            f"one worker needs {asked}, more than any node offers ({largest}); "
            f"lower ray.cpus_per_worker / ray.resources_per_worker, set ray.use_gpu=false, "
            f"or add a node type that has them")
    now = sum(workers_fitting(request, s.resources) for s in alive)
    if now >= max_workers:
        return []
    workers = f"{min_workers}..{max_workers}" if min_workers != max_workers else f"{max_workers}"
    if grows:
        unlimited = any(s.max_count < 0 for s in scalable)
        at_most = now + sum(workers_fitting(request, s.resources) * s.max_count for s in scalable if s.max_count > 0)
        if scalable and not unlimited and at_most < min_workers:
            raise PreflightError(
                f"ray.num_workers={workers} workers x ({asked}) need more than this cluster can grow to "
                f"(at most {at_most} such workers with every node type at its max count); "
                f"lower ray.num_workers or raise the autoscaler's max_workers")
        return [_growing(scaling, f"{now} of {workers} worker(s) of ({asked}) fit on the nodes running now; "
                                  f"Ray Train waits for the autoscaler to start more nodes", "lower ray.num_workers")]
    if now >= min_workers:
        return [f"training starts with {now} worker(s) (ray.num_workers={workers}) and grows to "
                f"{max_workers} when the cluster has room"]
    totals: dict[str, float] = {}
    for s in alive:
        for k in request:
            totals[k] = totals.get(k, 0.0) + s.resources.get(k, 0.0)
    has = ", ".join(f"{totals.get(k, 0):g} {k}" for k in request)
    raise PreflightError(
        f"ray.num_workers={workers} workers x ({asked}) do not fit on the cluster "
        f"({len(alive)} node(s), {has} in total; at most {now} such worker(s) fit) and it does not autoscale. "
        f"Lower ray.num_workers / ray.cpus_per_worker, set ray.use_gpu=false, or add nodes.")


def _growing(scaling: Scaling, what: str, remedy: str) -> str:
    """The warning ``what`` on a cluster that can (or, unknown, might) grow, with why we think so."""
    if scaling.state == UNKNOWN:
        return (f"could not tell whether the cluster can start more nodes: {scaling.reason}. Going on as if it can: "
                f"{what}. If it cannot grow, the training waits for ever: {remedy}")
    return f"{what} ({scaling.reason})" if scaling.reason else what


def _describe(resources: dict[str, float], request: dict[str, float]) -> str:
    return "/".join(f"{resources.get(k, 0):g} {k}" for k in request)


def live_nodes() -> list[NodeShape]:
    """The nodes running now (``ray.nodes()``)."""
    import ray

    return [NodeShape(name=n.get("NodeName") or n["NodeID"][:8], resources=dict(n.get("Resources", {})),
                      node_id=n["NodeID"], ip=n.get("NodeManagerAddress"))
            for n in ray.nodes() if n.get("Alive")]


def read_scaling(status: Any) -> Scaling:
    """Whether a cluster can grow, from its autoscaler status (a ``ray.autoscaler.v2.schema.ClusterStatus``).

    Launches (pending or failed) and nodes of named node types mean an autoscaler manages the
    cluster; a node started by hand has no node type (the status names it ``node_<node id>``).
    """
    starting = [*status.pending_launches, *status.pending_nodes, *status.failed_launches]
    if starting:
        types = ", ".join(sorted({s.ray_node_type_name for s in starting}))
        return Scaling(AUTOSCALING, f"its autoscaler is starting nodes of type {types}")
    if str(status.stats.autoscaler_version or 0) == "0":
        return Scaling(UNKNOWN, "no autoscaler reports its state (Ray's autoscaler v1 does not, nor does a cluster "
                                "started by hand without RAY_enable_autoscaler_v2=1)")
    nodes = [*status.active_nodes, *status.idle_nodes]
    typed = sorted({n.ray_node_type_name for n in nodes if n.ray_node_type_name != f"node_{n.node_id}"})
    if typed:
        return Scaling(AUTOSCALING, f"it runs nodes of its autoscaler's node types {', '.join(typed)}")
    return Scaling(FIXED, "its autoscaler reports only nodes started by hand")


def cluster_scaling(status: Callable[[], Any] | None = None, wait_s: float = AUTOSCALER_REPORT_WAIT_S,
                    poll_s: float = 1.0) -> Scaling:
    """:func:`read_scaling` of ``status()`` (default: Ray's public autoscaler status of this cluster,
    ``ray.autoscaler.v2.sdk.get_cluster_status``), asked again for up to ``wait_s`` seconds while no
    autoscaler has reported (a new cluster's reports after a few seconds); :data:`UNKNOWN`, with the
    error, when the status cannot be read."""
    status = status or _autoscaler_status
    deadline = time.monotonic() + wait_s
    while True:
        try:
            scaling = read_scaling(status())
        except Exception as err:  # no answer: a timeout, a Ray Client driver without GCS access, another Ray
            message = (str(err).strip().splitlines() or [""])[-1][:300]
            return Scaling(UNKNOWN, f"Ray's autoscaler status could not be read ({type(err).__name__}: {message})")
        if scaling.state != UNKNOWN or time.monotonic() + poll_s > deadline:
            return scaling
        time.sleep(poll_s)


def _autoscaler_status() -> Any:
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    return get_cluster_status(ray.get_runtime_context().gcs_address, timeout=STATUS_TIMEOUT_S)


def check_cluster_capacity(request: dict[str, float], min_workers: int, max_workers: int, nodes: list[NodeShape],
                           scaling: Callable[[], Scaling] = cluster_scaling) -> None:
    """:func:`check_capacity` on the live ``nodes``, its warnings logged. Whether the cluster can grow
    (``scaling()``) is asked only when the nodes cannot hold ``max_workers`` workers now."""
    growth = None
    if sum(workers_fitting(request, n.resources) for n in nodes) < max_workers:
        growth = scaling()
    for warning in check_capacity(request, min_workers, max_workers, nodes, growth):
        logger.warning(warning)


@dataclass
class DataManifest:
    """What every node must see of ``data_dir``: the split files' digests and a few images."""

    data_dir: str
    digests: dict[str, str] = field(default_factory=dict)   # split file name -> sha256
    images: list[str] = field(default_factory=list)          # paths relative to data_dir


def data_manifest(data_dir: Path, samples: int = _SAMPLE_IMAGES) -> DataManifest:
    """Digests of ``train.json``/``val.json`` and ``samples`` image files per split (first, middle, last)."""
    manifest = DataManifest(str(data_dir))
    pattern = re.compile(rb'"file_name"\s*:\s*"((?:[^"\\]|\\.)*)"')
    for split in ("train.json", "val.json"):
        data = (data_dir / split).read_bytes()
        manifest.digests[split] = hashlib.sha256(data).hexdigest()
        names = [m.group(1) for m in pattern.finditer(data)]
        picks = sorted({0, len(names) // 2, len(names) - 1}) if names else []
        for i in picks[:samples]:
            manifest.images.append(json.loads(b'"' + names[i] + b'"'))
    return manifest


# A node's data check: the problems reading a manifest on this node, empty when all is well.
DataCheck = Callable[[DataManifest], list[str]]


def check_data_files(manifest: DataManifest) -> list[str]:
    """Problems reading ``manifest`` here (empty when all is well). Runs on every node."""
    root = Path(manifest.data_dir)
    problems = []
    if not root.exists():
        return [f"{root}: no such folder"]
    for split, digest in manifest.digests.items():
        path = root / split
        if not path.exists():
            problems.append(f"{path}: not found")
            continue
        try:
            h = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as err:
            problems.append(f"{path}: not readable ({err})")
            continue
        if h.hexdigest() != digest:
            problems.append(f"{path}: differs from the driver's copy")
    for name in manifest.images:
        path = root / name
        try:
            if not path.exists():
                raise FileNotFoundError("not found")
            with path.open("rb") as f:
                f.read(1)
        except OSError as err:
            problems.append(f"{path}: {getattr(err, 'strerror', None) or err}")
    return problems


def _node_check(manifest: DataManifest, storage_probe: str | None, versions: dict[str, str],
                data_check: DataCheck = check_data_files) -> dict[str, Any]:
    """The task run on each node: what this node cannot do, by area."""
    import ray

    from pipeline.driver import identity, storage

    out: dict[str, Any] = {"node_id": ray.get_runtime_context().get_node_id(), "data": [], "storage": [],
                           "versions": []}
    out["data"] = data_check(manifest)
    if storage_probe is not None:
        try:
            if not storage.exists(storage_probe):
                out["storage"].append(f"a file the driver wrote there ({storage_probe}) is not visible on this node")
        except Exception as err:
            out["storage"].append(f"not reachable from this node ({type(err).__name__}: {err})")
    here = identity.library_versions()
    out["versions"] = [f"{k} {here.get(k)} (driver: {v})" for k, v in versions.items() if here.get(k) != v]
    return out


def check_nodes(nodes: list[NodeShape], manifest: DataManifest, storage_path: str,
                timeout_s: float = NODE_CHECK_TIMEOUT_S, data_check: DataCheck = check_data_files) -> None:
    """Run :func:`_node_check` on each of ``nodes``; raise one :class:`PreflightError` listing every problem.

    The driver's own node is checked in this process (same files, same libraries); every other
    node by a tiny task pinned to it, which runs ``data_check`` there.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.driver import identity, storage

    here = ray.get_runtime_context().get_node_id()
    probe = storage.write_probe(storage_path)
    try:
        task = ray.remote(_node_check)
        refs = {node.node_id: task.options(
                    num_cpus=0, max_retries=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                ).remote(manifest, probe, identity.library_versions(), data_check)
                for node in nodes if node.node_id != here}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
        results: dict[str, dict[str, Any]] = {}
        for node in nodes:
            if node.node_id == here:
                results[here] = {"data": data_check(manifest), "storage": [], "versions": []}
                continue
            ref = refs[node.node_id]
            if ref not in ready:
                results[node.node_id] = {"error": f"did not answer within {timeout_s:.0f} s"}
                ray.cancel(ref, force=True)
                continue
            try:
                results[node.node_id] = ray.get(ref)
            except Exception as err:  # e.g. the runtime environment could not be set up there
                results[node.node_id] = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"}
    finally:
        storage.remove(probe)
    lines = []
    for node in nodes:
        result = results[node.node_id]
        where = f"node {node.node_id[:12]} ({node.ip})"
        if "error" in result:
            lines.append(f"{where}: the check task failed: {result['error']}")
            continue
        lines += [f"{where}: data_dir {p}" for p in result["data"]]
        lines += [f"{where}: ray.storage_path {storage_path}: {p}" for p in result["storage"]]
        lines += [f"{where}: {p}" for p in result["versions"]]
    if lines:
        raise PreflightError(
            f"{len({ln.split(':')[0] for ln in lines})} of {len(nodes)} node(s) that can run a worker cannot run "
            f"this training:\n  " + "\n  ".join(lines) + "\n"
            "Every node that runs a worker reads data_dir at the same path (a shared filesystem, or a copy of "
            "the same prepared data on each node), writes checkpoints to the same ray.storage_path (shared "
            "filesystem or s3://...), and has the driver's torch/torchvision installed.")


def preflight(params: Params, *, storage_path: str, tracking_uri: str | None, data_dir: Path,
              data_check: DataCheck = check_data_files) -> None:
    """Every check of this module (see there), cheapest first. ``tracking_uri=None``: no tracking check.

    ``data_check`` runs on every node that can run a worker (default: :func:`check_data_files`).
    """
    from pipeline.driver import storage
    from pipeline.tracking import mlflow_runs as tracking

    rp = params.ray
    request = worker_request(params)
    live = live_nodes()
    check_cluster_capacity(request, rp.min_workers, rp.max_workers, live)
    try:
        storage.check_writable(storage_path)
    except storage.StorageError as err:
        raise PreflightError(str(err)) from err
    if tracking_uri is not None:
        try:
            tracking.check_reachable(tracking_uri)
        except RuntimeError as err:
            raise PreflightError(str(err)) from err
    nodes = [s for s in live if workers_fitting(request, s.resources) >= 1]
    check_nodes(nodes, data_manifest(data_dir), storage_path, data_check=data_check)

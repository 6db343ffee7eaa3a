"""Checks before a training starts: fail fast on what can never succeed, warn on what may wait.

:func:`preflight` raises :class:`PreflightError` when

- one worker (``ray.cpus_per_worker`` CPUs, a GPU with ``ray.use_gpu``, ``resources_per_worker``)
  needs more than any node the cluster has or its autoscaler can start,
- a fixed-size cluster cannot place the minimum number of workers,
- the storage path is not writable, or the MLflow tracking store does not answer,
- on a node that can run a worker, ``data_dir`` is not readable (or holds other data than the
  driver's), ``ray.storage_path`` is not the folder the driver sees, or torch/torchvision
  differ from the driver's (checked by a tiny task pinned to each such node).

On an autoscaling cluster (the autoscaler reports node types that can still be started)
too few workers fitting *now* is only a warning: Ray Train asks the autoscaler and waits.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.params import Params

__all__ = ["DataCheck", "DataManifest", "NodeShape", "PreflightError", "check_capacity", "check_data_files",
           "cluster_shapes", "preflight", "worker_request"]

logger = logging.getLogger(__name__)

NODE_CHECK_TIMEOUT_S = 300.0  # the first task on a node also sets up the runtime environment
_SAMPLE_IMAGES = 3             # image files per split checked on every node


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
                   shapes: list[NodeShape]) -> list[str]:
    """Decide whether ``min_workers``..``max_workers`` workers of ``request`` can run on ``shapes``.

    Returns warnings to show (Ray Train will wait for resources); raises
    :class:`PreflightError` when the request can never be placed.
    """
    alive = [s for s in shapes if s.alive]
    scalable = [s for s in shapes if not s.alive and s.max_count != 0]
    asked = ", ".join(f"{v:g} {k}" for k, v in request.items())
    if not any(workers_fitting(request, s.resources) >= 1 for s in alive + scalable):
        largest = ", ".join(sorted({_describe(s.resources, request) for s in alive + scalable})) or "no nodes"
        raise PreflightError(
            f"one worker needs {asked}, more than any node offers ({largest}); "
            f"lower ray.cpus_per_worker / ray.resources_per_worker, set ray.use_gpu=false, "
            f"or add a node type that has them")
    now = sum(workers_fitting(request, s.resources) for s in alive)
    if now >= max_workers:
        return []
    workers = f"{min_workers}..{max_workers}" if min_workers != max_workers else f"{max_workers}"
    if scalable:
        unlimited = any(s.max_count < 0 for s in scalable)
        at_most = now + sum(workers_fitting(request, s.resources) * s.max_count for s in scalable if s.max_count > 0)
        if not unlimited and at_most < min_workers:
            raise PreflightError(
                f"ray.num_workers={workers} workers x ({asked}) need more than this cluster can grow to "
                f"(at most {at_most} such workers with every node type at its max count); "
                f"lower ray.num_workers or raise the autoscaler's max_workers")
        return [f"{now} of {workers} worker(s) of ({asked}) fit on the nodes running now; "
                f"Ray Train waits for the autoscaler to start more nodes"]
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


def _describe(resources: dict[str, float], request: dict[str, float]) -> str:
    return "/".join(f"{resources.get(k, 0):g} {k}" for k in request)


def cluster_shapes() -> list[NodeShape]:
    """Live nodes (``ray.nodes()``) and the autoscaler's node types, where Ray reports them."""
    import ray

    shapes = [NodeShape(name=n.get("NodeName") or n["NodeID"][:8], resources=dict(n.get("Resources", {})),
                        node_id=n["NodeID"], ip=n.get("NodeManagerAddress"))
              for n in ray.nodes() if n.get("Alive")]
    try:  # the autoscaler publishes its node types to the GCS (KubeRay, cluster launcher)
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # not reported, or another Ray version
        config = None
    for group in getattr(config, "node_group_configs", None) or []:
        if group.max_count == 0 or not group.resources:
            continue
        if group.max_count > 0 and group.max_count <= group.min_count:
            continue  # a fixed group: its nodes are among the live ones
        shapes.append(NodeShape(name=group.name, resources={k: float(v) for k, v in group.resources.items()},
                                alive=False, max_count=group.max_count))
    return shapes


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
    shapes = cluster_shapes()
    for warning in check_capacity(request, rp.min_workers, rp.max_workers, shapes):
        logger.warning(warning)
    try:
        storage.check_writable(storage_path)
    except storage.StorageError as err:
        raise PreflightError(str(err)) from err
    if tracking_uri is not None:
        try:
            tracking.check_reachable(tracking_uri)
        except RuntimeError as err:
            raise PreflightError(str(err)) from err
    nodes = [s for s in shapes if s.alive and workers_fitting(request, s.resources) >= 1]
    check_nodes(nodes, data_manifest(data_dir), storage_path, data_check=data_check)

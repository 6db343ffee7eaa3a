"""The driver: preflight checks, the ``TorchTrainer``, MLflow run and final model.

Layer 2 of 3: ``loop.train_loop_per_worker`` runs on every DDP rank (layer 1); :func:`fit`
builds and runs the ``TorchTrainer`` around it; the ``train`` stage (``pipeline/train.py``)
and the Tune sweep (layer 3, one :func:`fit` per trial) call :func:`fit`.

Resuming: Ray Train V2 resumes a run automatically when ``fit`` is called again with the
same ``RunConfig(name, storage_path)``. The stage names its run from a hash of everything
the training reads (:func:`default_run_name`), so rerunning after an interruption resumes
and a changed config starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.params import Params
from pipeline.training.loop import NonFiniteLossError

__all__ = ["PreflightError", "TrainResult", "TrainingError", "default_run_name", "ensure_ray", "fit",
           "preflight", "resolve_storage_path"]

# Test-only hooks, read here (never in the loop) and passed to the workers in their config.
DEBUG_ENV = {
    "record_dir": "DETPIPE_DEBUG_DIR",          # each rank appends what it did to rank<r>.jsonl
    "fault_at_step": "DETPIPE_FAULT_AT_STEP",   # a worker exits at this global step ...
    "fault_marker": "DETPIPE_FAULT_MARKER",     # ... once: only if it can create this file
    "fault_rank": "DETPIPE_FAULT_RANK",         # which rank (default: the last)
    "nonfinite_at_step": "DETPIPE_NONFINITE_AT_STEP",  # the loss becomes NaN at this global step
}


class PreflightError(RuntimeError):
    """The cluster, storage or tracking server cannot run this training; raised before it starts."""


class TrainingError(RuntimeError):
    """Ray Train gave up (worker failures beyond ``ray.max_failures``, or an error in the loop)."""


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``model`` is the final model on CPU in eval mode."""

    run_name: str
    run_path: str                      # the Ray run folder: <storage_path>/<run_name>
    checkpoint_path: str               # the latest checkpoint (epoch ``epochs``)
    history: list[dict[str, Any]]      # one row per epoch: epoch, loss terms, loss, lr, images_per_s, AP...
    summary: dict[str, Any]            # reports/train.json
    model: Any
    model_config: dict[str, Any]
    class_names: list[str]
    mlflow_run: dict[str, str] | None = None  # {"run_id", "tracking_uri", "experiment_id"}
    model_uri: str | None = None              # models:/NAME/VERSION if registered, else models:/m-... (logged)
    reports: dict[str, str] = field(default_factory=dict)  # name -> path of the written reports


def fit(params: Params, *, run_name: str, storage_path: str, callbacks: Sequence[Any] = (),
        mlflow_parent_run_id: str | None = None, data_dir: str | Path = "data/prepared",
        reports_dir: str | Path | None = None, artifacts: Sequence[str | Path] = (),
        tags: dict[str, str] | None = None, root: str | Path = ".") -> TrainResult:
    """Train ``params`` with Ray Train (DDP) and track it in MLflow; resume ``run_name`` if it exists.

    Args:
        params: the typed params; reads ``model``, ``train``, ``ray``, ``mlflow``,
            ``data.resize``.
        run_name: Ray run name; the same name and storage path resume that run.
        storage_path: absolute folder or URI (``s3://...``) shared by all nodes.
        callbacks: Ray Train ``UserCallback``s, e.g. Tune's ``TuneReportCallback()``.
        mlflow_parent_run_id: nest this training's MLflow run under that run (Tune sweeps).
        data_dir: folder with ``train.json``/``val.json`` (COCO format) and their images.
        reports_dir: where ``train.json``, ``train_curve.csv`` and ``loss_curve.png`` are written
            (default: a temporary folder; they are logged to MLflow either way).
        artifacts: extra files logged to the MLflow run when present (params.yaml, data reports).
        tags: extra MLflow run tags.
        root: the project root: default ``mlflow.db``/``mlruns`` location and ``detector/`` code.

    Raises:
        PreflightError: not enough CPUs/GPUs, storage not writable, MLflow not reachable.
        NonFiniteLossError: a loss became NaN/inf (the message names the step and the terms).
        TrainingError: Ray Train failed (e.g. more worker failures than ``ray.max_failures``).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.training import tracking

    root = Path(root).resolve()
    data_dir = Path(data_dir).resolve()
    for split in ("train.json", "val.json"):
        if not (data_dir / split).is_file():
            raise FileNotFoundError(f"{data_dir / split} not found: run `python -m pipeline prepare` first")
    storage_path = resolve_storage_path(storage_path, root)
    tracking_uri = tracking.resolve_tracking_uri(params.mlflow.tracking_uri, root)

    ensure_ray(params.ray.address)
    preflight(params, storage_path=storage_path, tracking_uri=tracking_uri)

    rp = params.ray
    ray_run = f"{storage_path.rstrip('/')}/{run_name}"
    run_tags = {
        "git_commit": tracking.git_commit(root), "params_hash": params_hash(params, data_dir),
        "world_size": str(rp.num_workers), "device": "cuda" if rp.use_gpu else "cpu",
        "ray_run_name": run_name, **(tags or {}),
    }
    mlflow_run = tracking.start_run(
        tracking_uri=tracking_uri, experiment_name=params.mlflow.experiment_name, run_name=run_name,
        ray_run=ray_run, root=root, params={"model": params.model, "train": params.to_dict()["train"]},
        tags=run_tags, parent_run_id=mlflow_parent_run_id,
    )
    score = rp.checkpoint_score_attribute
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"params": params, "data_dir": str(data_dir), "debug": _debug_hooks(rp.num_workers),
                           "mlflow": {"tracking_uri": tracking_uri, "run_id": mlflow_run["run_id"]}},
        scaling_config=ray.train.ScalingConfig(num_workers=rp.num_workers, use_gpu=rp.use_gpu,
                                               resources_per_worker=_resources_per_worker(params)),
        torch_config=TorchConfig(backend="nccl" if rp.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, callbacks=list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # progress comes from rank 0
            failure_config=ray.train.FailureConfig(max_failures=rp.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=rp.checkpoints_to_keep, checkpoint_score_attribute=score,
                checkpoint_score_order="max" if score and score.startswith("AP") else "min"),
        ),
    )
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as err:
        tracking.mark_failed(mlflow_run)
        raise TrainingError(f"training run {run_name} failed: {err}") from err
    wall_time = time.perf_counter() - start
    outcome = result.return_value or {}
    if outcome.get("status") == "nonfinite":
        tracking.mark_failed(mlflow_run)
        raise NonFiniteLossError(outcome["error"])
    if result.checkpoint is None:
        tracking.mark_failed(mlflow_run)
        raise TrainingError(f"training run {run_name} finished without a checkpoint")

    saved = _load_final_state(result.checkpoint)
    model = _build_model(saved)
    history = sorted(saved["history"], key=lambda r: r["epoch"])
    summary = _summary(history, wall_time=wall_time, world_size=saved["world_size"], params=params,
                       run_name=run_name)

    from pipeline.serving.config import ServingConfig
    from pipeline.training import reports

    out_dir = Path(reports_dir) if reports_dir is not None else Path(tempfile.mkdtemp(prefix="train-reports-"))
    written = {
        "train_json": reports.write_summary(summary, out_dir / "train.json"),
        "train_curve_csv": reports.write_curve_csv(history, out_dir / "train_curve.csv"),
        "loss_curve_png": reports.write_loss_png(history, out_dir / "loss_curve.png"),
    }
    model_uri = tracking.log_final(
        mlflow_run, model=model, artifacts=[*written.values(), *(Path(a) for a in artifacts)],
        log_model=params.mlflow.log_model, registered_model_name=params.mlflow.registered_model_name,
        alias=params.mlflow.registered_model_alias, val_metrics=summary, run_tags=run_tags,
        serving=ServingConfig(min_size=params.data.resize.min_size, max_size=params.data.resize.max_size),
    )
    return TrainResult(
        run_name=run_name, run_path=result.path, checkpoint_path=result.checkpoint.path, history=history,
        summary=summary, model=model, model_config=saved["model_config"], class_names=saved["class_names"],
        mlflow_run=dict(mlflow_run), model_uri=model_uri, reports={k: str(v) for k, v in written.items()},
    )


def _train_fn(config: dict[str, Any]) -> dict[str, Any]:
    # imported inside the worker, so the driver does not pay for torch/detector imports twice
    from pipeline.training.loop import train_loop_per_worker

    return train_loop_per_worker(config)


# --------------------------------------------------------------------------- cluster
def ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a new local Ray; no-op if connected.

    ``"auto"`` joins the cluster this machine belongs to (``ray start``); ``"local"`` or no
    address always starts a fresh local instance with this machine's CPUs/GPUs.

    Returns True when this call started/connected Ray (the caller may ``ray.shutdown()``).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        address = None
    env_vars = {k: os.environ[k] for k in ("RAY_TRAIN_ENABLE_PRINT_PATCH", "MLFLOW_DISABLE_TELEMETRY")}
    kwargs: dict[str, Any] = {}
    # Ray Train's placement-group cleaner (a detached actor) finds the cluster through the State
    # API; with no address it auto-detects and fails when several Ray instances share the machine
    # ("Found multiple active Ray instances"), leaking placement groups. Tell it where to look.
    if address is None:
        # "local": never join whatever /tmp/ray/ray_current_cluster points at (a stale `ray start`)
        address = "local"
        kwargs["dashboard_port"] = _free_port()
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"
        # Ray Train's PreemptionWatcher watches for nodes being drained (autoscaler, spot); a local
        # single-machine Ray has none. It is an actor with max_restarts=-1 whose constructor takes the
        # workers' actor handles, which makes Ray's core worker log an error line on every run
        # ("... constructor arguments in the object store and max_restarts > 0", ray#53727).
        env_vars["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    elif address != "auto" and "://" not in address:
        env_vars["RAY_ADDRESS"] = address
    ray.init(address=address, logging_config=ray.LoggingConfig(log_level="ERROR"), log_to_driver=True,
             runtime_env={"env_vars": env_vars}, **kwargs)
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preflight(params: Params, *, storage_path: str, tracking_uri: str) -> None:
    """Fail fast, with a message saying what is missing, instead of waiting forever.

    Checks that the cluster's live nodes can place ``ray.num_workers`` workers of
    ``resources_per_worker`` each (whole workers per node), that ``storage_path`` is
    writable and that the MLflow tracking store answers.
    """
    import ray

    from pipeline.training import tracking

    rp = params.ray
    need = _resources_per_worker(params)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    placeable = 0
    for node in nodes:
        have = node.get("Resources", {})
        placeable += min(math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    if placeable < rp.num_workers:
        totals = ray.cluster_resources()
        asked = ", ".join(f"{v:g} {k}" for k, v in need.items() if v > 0)
        has = ", ".join(f"{totals.get(k, 0):g} {k}" for k in need)
        raise PreflightError(
            f"ray.num_workers={rp.num_workers} workers x ({asked}) do not fit on the cluster "
            f"({len(nodes)} node(s), {has} in total; at most {placeable} such worker(s) fit). "
            f"Lower ray.num_workers / ray.cpus_per_worker, set ray.use_gpu=false, or add nodes."
        )
    _check_storage(storage_path)
    try:
        tracking.check_reachable(tracking_uri)
    except RuntimeError as err:
        raise PreflightError(str(err)) from err


def _resources_per_worker(params: Params) -> dict[str, float]:
    rp = params.ray
    out = {"CPU": float(rp.cpus_per_worker), **{k: float(v) for k, v in rp.resources_per_worker.items()}}
    if rp.use_gpu:
        out["GPU"] = out.get("GPU", 1.0)
    return out


def resolve_storage_path(storage_path: str | None, root: str | Path = ".") -> str:
    """``ray.storage_path`` as an absolute path (or URI); default ``<root>/ray_results``."""
    if not storage_path:
        return str((Path(root) / "ray_results").resolve())
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def _check_storage(storage_path: str) -> None:
    probe_name = f".detpipe-write-test-{os.getpid()}"
    try:
        if "://" in storage_path:
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(storage_path)
            fs.create_dir(path, recursive=True)
            with fs.open_output_stream(f"{path.rstrip('/')}/{probe_name}") as f:
                f.write(b"ok")
            fs.delete_file(f"{path.rstrip('/')}/{probe_name}")
        else:
            folder = Path(storage_path)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / probe_name).write_text("ok")
            (folder / probe_name).unlink()
    except Exception as err:
        raise PreflightError(f"ray.storage_path {storage_path} is not writable ({type(err).__name__}: {err}); "
                             f"every node needs write access to it (a shared filesystem or s3://...)") from err


# --------------------------------------------------------------------------- run identity
def params_hash(params: Params, data_dir: str | Path | None = None) -> str:
    """12 hex digits over everything the training result depends on (and the data, if given)."""
    d = params.to_dict()
    keyed = {"model": d["model"], "train": d["train"], "resize": d["data"]["resize"],
             "workers": d["ray"]["num_workers"], "gpu": d["ray"]["use_gpu"]}
    h = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode())
    if data_dir is not None:
        for split in ("train.json", "val.json"):
            path = Path(data_dir) / split
            if path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()[:12]


def default_run_name(params: Params, data_dir: str | Path) -> str:
    """``train-<hash>``: a rerun with the same params and data resumes; a change starts afresh."""
    return f"train-{params_hash(params, data_dir)}"


# --------------------------------------------------------------------------- results
def _load_final_state(checkpoint: Any) -> dict[str, Any]:
    from pipeline.training.state import load_state

    with checkpoint.as_directory() as directory:
        return load_state(directory)


def _build_model(saved: dict[str, Any]) -> Any:
    from detector import DetectorConfig, build_model

    names = saved["class_names"]
    config = DetectorConfig.from_dict(saved["model_config"], num_classes=len(names), class_names=names)
    model = build_model(config)
    model.load_state_dict(saved["model"])
    return model.eval()


def _summary(history: list[dict[str, Any]], *, wall_time: float, world_size: int, params: Params,
             run_name: str) -> dict[str, Any]:
    last = history[-1] if history else {}
    out: dict[str, Any] = {k: v for k, v in last.items() if k == "loss" or k.startswith("loss_")}
    out |= {
        "epochs": int(last.get("epoch", 0)),
        "images_per_s": sum(r["images_per_s"] for r in history) / max(1, len(history)),
        "wall_time_s": round(wall_time, 2),  # this invocation (a resumed run counts from the restart)
        "train_time_s": round(sum(r.get("epoch_time_s", 0.0) for r in history), 2),
        "world_size": world_size,
        "batch_size_total": params.train.batch_size * world_size,
        "lr_final": last.get("lr"),
    }
    for key in ("AP", "AP50", "AP75"):
        vals = [r[key] for r in history if key in r]
        if vals:
            out[key] = vals[-1]
    return out


def _debug_hooks(num_workers: int) -> dict[str, Any]:
    hooks: dict[str, Any] = {}
    for key, env in DEBUG_ENV.items():
        value = os.environ.get(env)
        if value:
            hooks[key] = int(value) if key.endswith(("_step", "_rank")) else value
    if "fault_at_step" in hooks:
        hooks.setdefault("fault_rank", num_workers - 1)
    return hooks

"""The driver: run identity, preflight checks, the ``TorchTrainer``, tracking and the final model.

Layer 2 of 3: ``loop.train_loop_per_worker`` runs on every DDP rank (layer 1); :func:`fit`
builds and runs the ``TorchTrainer`` around it; the ``train`` stage (``pipeline/train.py``)
and the Tune sweep (layer 3, one :func:`fit` per trial) call :func:`fit`.

Identity and resuming: the stage names its run ``train-<digest>`` from everything the result
depends on (:mod:`pipeline.driver.identity`: params, data, code, torch/torchvision). Ray
Train V2 resumes a run when ``fit`` is called again with the same ``RunConfig(name,
storage_path)``, so an interrupted run with identical inputs resumes, and any change (a code
edit included) starts a new run. Each run folder holds a record (:data:`RUN_RECORD`) of its
identity and status; a *finished* run with identical inputs is reused as it is ("reusing
finished run X": nothing is trained, logged or registered again).

Tracking happens on the driver's side only (:mod:`pipeline.tracking.progress`): workers report,
a Ray Train callback in the controller logs to MLflow, so no worker needs the tracking store.
System metrics (:mod:`pipeline.tracking.system_metrics`): the driver samples its own node into
the run; the other nodes' samples arrive with the reports.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.console import setup_console
from pipeline.driver import storage
from pipeline.driver.cluster import ensure_ray
from pipeline.driver.identity import RunIdentity, result_params, run_identity
from pipeline.driver.preflight import PreflightError, preflight
from pipeline.driver.storage import resolve_storage_path
from pipeline.params import Params
from pipeline.tracking.system_metrics import SystemMetricsSettings, run_monitor, this_node
from pipeline.training.losses import NonFiniteLossError

__all__ = ["RUN_RECORD", "PreflightError", "TrainResult", "TrainingError", "default_run_name", "ensure_ray", "fit",
           "preflight", "resolve_storage_path"]

logger = logging.getLogger(__name__)

RUN_RECORD = "detpipe_run.json"  # in the Ray run folder: identity, status, final checkpoint, MLflow run

# Test-only hooks, read here (never in the loop) and passed to the workers in their config.
DEBUG_ENV = {
    "record_dir": "DETPIPE_DEBUG_DIR",          # each rank appends what it did to rank<r>.jsonl
    "fault_at_step": "DETPIPE_FAULT_AT_STEP",   # a worker exits at this global step ...
    "fault_marker": "DETPIPE_FAULT_MARKER",     # ... once: only if it can create this file
    "fault_rank": "DETPIPE_FAULT_RANK",         # which rank (default: the last)
    "nonfinite_at_step": "DETPIPE_NONFINITE_AT_STEP",  # the loss becomes NaN at this global step
    "hang_at_step": "DETPIPE_HANG_AT_STEP",     # a worker stops at this global step (a hung node), once (marker)
}


class TrainingError(RuntimeError):
    """Ray Train gave up (worker failures beyond ``ray.max_failures``, or an error in the loop)."""


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``model`` is the final model on CPU in eval mode.

    ``reused`` is True when a finished run with identical inputs was found and nothing was
    trained: its MLflow run and model are the earlier ones, and no model version was registered.
    """

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
    reused: bool = False
    identity: dict[str, str] = field(default_factory=dict)


def fit(params: Params, *, run_name: str, storage_path: str, callbacks: Sequence[Any] = (),
        mlflow_parent_run_id: str | None = None, data_dir: str | Path = "data/prepared",
        reports_dir: str | Path | None = None, artifacts: Sequence[str | Path] = (),
        tags: dict[str, str] | None = None, root: str | Path = ".", track: bool = True, check: bool = True,
        identity: RunIdentity | None = None, sinks: Sequence[Any] = ()) -> TrainResult:
    """Train ``params`` with Ray Train (DDP) and track it in MLflow; resume ``run_name`` if it exists.

    Args:
        params: the typed params; reads ``model``, ``train``, ``ray``, ``mlflow``,
            ``data.resize``.
        run_name: Ray run name; the same name and storage path resume that run (or reuse it,
            when it finished with identical inputs).
        storage_path: absolute folder or URI (``s3://...``) shared by all nodes.
        callbacks: Ray Train ``UserCallback``s, e.g. Tune's ``TuneReportCallback()``.
        mlflow_parent_run_id: nest this training's MLflow run under that run.
        data_dir: folder with ``train.json``/``val.json`` (COCO format) and their images.
        reports_dir: where ``train.json``, ``train_curve.csv`` and ``loss_curve.png`` are written
            (default: a temporary folder; they are logged to MLflow either way).
        artifacts: extra files logged to the MLflow run when present (params.yaml, data reports).
        tags: extra MLflow run tags.
        root: the state root: default ``mlflow.db``/``mlruns`` location.
        track: False: no MLflow at all (a Tune trial: the sweep's driver tracks its reports; the
            workers then sample every node's system metrics, the driver's node included).
        check: False: skip :func:`preflight` (the caller ran it).
        identity: the run's identity (default: from the params, data and training code).
        sinks: more receivers of every epoch report on the driver's side (objects with
            ``on_epoch(report)``, see :mod:`pipeline.tracking.progress`), besides MLflow.

    Raises:
        PreflightError: the workers can never be placed, storage not writable, MLflow not
            reachable, a node cannot read the data.
        NonFiniteLossError: a loss became NaN/inf (the message names the step and the terms).
        TrainingError: Ray Train failed (e.g. more worker failures than ``ray.max_failures``).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.tracking import mlflow_runs as tracking
    from pipeline.tracking import progress

    setup_console()
    root = Path(root).resolve()
    data_dir = Path(data_dir).resolve()
    for split in ("train.json", "val.json"):
        if not (data_dir / split).is_file():
            raise FileNotFoundError(f"{data_dir / split} not found: run `python -m pipeline prepare` first")
    storage_path = resolve_storage_path(storage_path, root)
    ray_run = storage.join(storage_path, run_name)
    record_path = storage.join(ray_run, RUN_RECORD)
    identity = identity or run_identity(result_params(params), data_dir)
    record = storage.read_json(record_path) or {}
    changed = identity.differences(record.get("identity")) if record else []
    if record.get("status") == "finished" and not changed:
        return _reuse(record, params, run_name=run_name, ray_run=ray_run, reports_dir=reports_dir)
    if changed:  # only with an explicit run name: default names contain the identity
        _check_continuable(run_name, record, changed, params)
        logger.warning("run %s was made with other %s; continuing it as asked", run_name, ", ".join(changed))
    tracking_uri = tracking.resolve_tracking_uri(params.mlflow.tracking_uri, root) if track else None

    ensure_ray(params.ray.address)
    if check:
        preflight(params, storage_path=storage_path, tracking_uri=tracking_uri, data_dir=data_dir)

    rp = params.ray
    mlflow_run = None
    sinks = list(sinks)
    system = None  # what the workers sample (pipeline.tracking.system_metrics)
    driver_node = None  # the driver's node, when the driver samples it into the run
    if params.mlflow.system_metrics:
        if track:
            try:  # with tracking, the driver samples its own node into the run; its workers need not
                driver_node = this_node()[1]
            except Exception:  # a driver outside the cluster (Ray Client): the workers sample every node
                driver_node = None
        system = SystemMetricsSettings(params.mlflow.system_metrics_interval_s, skip_node_id=driver_node)
    if track:
        run_tags = {
            "git_commit": tracking.git_commit(root), **identity.tags(),
            "world_size": "..".join(map(str, rp.num_workers)) if isinstance(rp.num_workers, list) else str(rp.num_workers),
            "device": "cuda" if rp.use_gpu else "cpu", "ray_run_name": run_name, **(tags or {}),
        }
        mlflow_run = tracking.start_run(
            tracking_uri=tracking_uri, experiment_name=params.mlflow.experiment_name, run_name=run_name,
            ray_run=ray_run, root=root, params={"model": params.model, "train": params.to_dict()["train"]},
            tags=run_tags, parent_run_id=mlflow_parent_run_id,
        )
        sinks.insert(0, progress.MlflowMetrics(tracking_uri, mlflow_run["run_id"]))
    storage.write_json(record_path, {"status": "running", "run_name": run_name, "identity": identity.to_dict(),
                                     "mlflow_run": dict(mlflow_run) if mlflow_run else None})
    score = rp.checkpoint_score_attribute
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"params": params, "data_dir": str(data_dir), "system_metrics": system,
                           "debug": _debug_hooks(rp.max_workers)},
        scaling_config=ray.train.ScalingConfig(num_workers=rp.scaling_num_workers(), use_gpu=rp.use_gpu,
                                               resources_per_worker=_resources_per_worker(params)),
        torch_config=TorchConfig(backend="nccl" if rp.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path,
            callbacks=[progress.ProgressCallback(sinks), *callbacks] if sinks else list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # progress comes from rank 0
            failure_config=ray.train.FailureConfig(max_failures=rp.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=rp.checkpoints_to_keep, checkpoint_score_attribute=score,
                checkpoint_score_order="max" if score and score.startswith("AP") else "min"),
        ),
    )
    start = time.perf_counter()
    try:
        with run_monitor(mlflow_run if driver_node else None, params.mlflow.system_metrics_interval_s):
            result = trainer.fit()
    except Exception as err:
        if mlflow_run:
            tracking.mark_failed(mlflow_run)
        raise TrainingError(f"training run {run_name} failed: {err}") from err
    wall_time = time.perf_counter() - start
    outcome = result.return_value or {}
    if outcome.get("status") == "nonfinite":
        if mlflow_run:
            tracking.mark_failed(mlflow_run)
        raise NonFiniteLossError(outcome["error"])
    if result.checkpoint is None:
        if mlflow_run:
            tracking.mark_failed(mlflow_run)
        raise TrainingError(f"training run {run_name} finished without a checkpoint")

    saved = _load_final_state(result.checkpoint)
    model = _build_model(saved)
    history = sorted(saved["history"], key=lambda r: r["epoch"])
    summary = _summary(history, wall_time=wall_time, world_size=saved["world_size"], params=params)
    written = _write_reports(history, summary, reports_dir)
    model_uri = None
    if mlflow_run:
        from pipeline.serving.config import ServingConfig

        model_uri = tracking.log_final(
            mlflow_run, model=model, artifacts=[*written.values(), *(Path(a) for a in artifacts)],
            log_model=params.mlflow.log_model, registered_model_name=params.mlflow.registered_model_name,
            alias=params.mlflow.registered_model_alias, val_metrics=summary, run_tags=run_tags,
            serving=ServingConfig(min_size=params.data.resize.min_size, max_size=params.data.resize.max_size),
        )
    storage.write_json(record_path, {
        "status": "finished", "run_name": run_name, "identity": identity.to_dict(),
        "checkpoint_path": result.checkpoint.path, "epochs": len(history), "wall_time_s": round(wall_time, 2),
        "mlflow_run": dict(mlflow_run) if mlflow_run else None, "model_uri": model_uri,
    })
    return TrainResult(
        run_name=run_name, run_path=ray_run, checkpoint_path=result.checkpoint.path, history=history,
        summary=summary, model=model, model_config=saved["model_config"], class_names=saved["class_names"],
        mlflow_run=dict(mlflow_run) if mlflow_run else None, model_uri=model_uri,
        reports={k: str(v) for k, v in written.items()}, identity=identity.to_dict(),
    )


def _check_continuable(run_name: str, record: dict[str, Any], changed: list[str], params: Params) -> None:
    """A finished run continues under its name only to train more epochs with the same code and data."""
    if record.get("status") != "finished":
        return
    hint = "start a new run (--fresh, or another --run-name)"
    if set(changed) - {"params"}:
        raise TrainingError(f"run {run_name} finished with other {', '.join(c for c in changed if c != 'params')}; "
                            f"continuing it would mix them into one model: {hint}")
    done = int(record.get("epochs") or 0)
    if done >= params.train.epochs:
        raise TrainingError(f"run {run_name} already finished {done} epoch(s) with other params; continuing it "
                            f"to train.epochs={params.train.epochs} would train nothing: {hint}")


def _reuse(record: dict[str, Any], params: Params, *, run_name: str, ray_run: str,
           reports_dir: str | Path | None) -> TrainResult:
    """The result of the finished run ``record`` describes, read back from its final checkpoint."""
    import ray.train

    path = record.get("checkpoint_path")
    if not path or not storage.exists(path):
        raise TrainingError(f"run {run_name} finished, but its final checkpoint {path} is gone; "
                            f"start a new run with --fresh (or remove {ray_run})")
    mlflow_run = record.get("mlflow_run")
    logger.info("reusing finished run %s%s: same params, data, code and torch/torchvision; nothing to train, "
                "no new model version", run_name, f" (MLflow run {mlflow_run['run_id']})" if mlflow_run else "")
    saved = _load_final_state(ray.train.Checkpoint(path))
    history = sorted(saved["history"], key=lambda r: r["epoch"])
    summary = _summary(history, wall_time=float(record.get("wall_time_s") or 0.0), world_size=saved["world_size"],
                       params=params)
    written = _write_reports(history, summary, reports_dir)
    return TrainResult(
        run_name=run_name, run_path=ray_run, checkpoint_path=path, history=history, summary=summary,
        model=_build_model(saved), model_config=saved["model_config"], class_names=saved["class_names"],
        mlflow_run=mlflow_run, model_uri=record.get("model_uri"), reports={k: str(v) for k, v in written.items()},
        reused=True, identity=dict(record.get("identity") or {}),
    )


def _write_reports(history: list[dict[str, Any]], summary: dict[str, Any],
                   reports_dir: str | Path | None) -> dict[str, Path]:
    from pipeline.tracking import reports

    out_dir = Path(reports_dir) if reports_dir is not None else Path(tempfile.mkdtemp(prefix="train-reports-"))
    return {
        "train_json": reports.write_summary(summary, out_dir / "train.json"),
        "train_curve_csv": reports.write_curve_csv(history, out_dir / "train_curve.csv"),
        "loss_curve_png": reports.write_loss_png(history, out_dir / "loss_curve.png"),
    }


def _train_fn(config: dict[str, Any]) -> dict[str, Any]:
    # imported inside the worker, so the driver does not pay for torch/detector imports twice
    from pipeline.training.worker import train_loop_per_worker

    return train_loop_per_worker(config)


# --------------------------------------------------------------------------- run identity
def default_run_name(params: Params, data_dir: str | Path) -> str:
    """``train-<digest>`` of :func:`pipeline.driver.identity.run_identity`: identical inputs, same name."""
    return f"train-{run_identity(result_params(params), data_dir).digest()}"


def _resources_per_worker(params: Params) -> dict[str, float]:
    from pipeline.driver.preflight import worker_request

    return worker_request(params)


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


def _summary(history: list[dict[str, Any]], *, wall_time: float, world_size: int, params: Params) -> dict[str, Any]:
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

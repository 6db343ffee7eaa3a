"""The driver: run identity, preflight checks, the ``TorchTrainer``, tracking and the final model.

Layer 2 of 3: ``pipeline.training.worker.train_loop_per_worker`` runs on every DDP rank
(layer 1); :func:`fit` builds (:func:`build_torch_trainer`) and runs the ``TorchTrainer`` around it;
the ``train`` stage (``pipeline/train.py``) and the Tune sweep (layer 3, one :func:`fit` per
trial) call :func:`fit`. A fresh run and a reused one end in the same :func:`_finish`: the
model, history, summary and reports read back from the final checkpoint.

Identity and resuming: the stage names its run ``train-<digest>`` from everything the result
depends on (:mod:`pipeline.driver.identity`: params, data, code, torch/torchvision). Ray
Train V2 resumes a run when ``fit`` is called again with the same ``RunConfig(name,
storage_path)``, so an interrupted run with identical inputs resumes, and any change (a code
edit included) starts a new run. Each run folder holds a record
(:class:`~pipeline.driver.record.RunRecord`) of its identity and status; a *finished* run with
identical inputs is reused as it is ("reusing finished run X": nothing is trained, logged or
registered again) when the current tracking store holds its MLflow run. In a store that does
not (another server, a deleted ``mlflow.db``) the reused model is recorded as a fresh run
records it (params, tags, epoch metrics, reports, model, registry version), tagged as reused
from the finished run, and the record points at that run from then on.

Test-only behaviour stays out of this module: a test passes its own worker ``hooks`` (fault
injection, records of what each rank did) and its own preflight ``check``.

Tracking happens on the driver's side only (:mod:`pipeline.tracking.progress`): workers report
each epoch and send their progress rows and system-metric samples through a live channel as they
go (:mod:`pipeline.tracking.channel`, opened here for the run and closed when it ends); a Ray Train
callback in the controller logs them to MLflow and DVCLive, so no worker needs the tracking store.
System metrics (:mod:`pipeline.tracking.system_metrics`): the driver samples its own node into
the run; the other nodes' samples arrive through the channel.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.console import setup_console
from pipeline.driver import storage
from pipeline.driver.cluster import ensure_ray, ready_autoscaling_coordinator
from pipeline.driver.identity import RunIdentity, result_params, run_identity
from pipeline.driver.preflight import PreflightError, preflight
from pipeline.driver.record import FINISHED, RUN_RECORD, RUNNING, RunRecord
from pipeline.driver.storage import resolve_storage_path
from pipeline.params import Params
from pipeline.tracking import mlflow_runs
from pipeline.tracking.system_metrics import SystemMetricsSettings, run_monitor, this_node
from pipeline.training.losses import NonFiniteLossError

__all__ = ["RUN_RECORD", "PreflightError", "TrainResult", "Tracking", "TrainingError", "build_torch_trainer",
           "default_run_name", "ensure_ray", "fit", "preflight", "resolve_storage_path"]

logger = logging.getLogger(__name__)

# The checks run before anything trains, called as ``check(params, storage_path=, tracking_uri=,
# data_dir=)``: :func:`pipeline.driver.preflight.preflight` or a variant of it.
Check = Callable[..., None]


class TrainingError(RuntimeError):
    """Ray Train gave up (worker failures beyond ``ray.max_failures``, or an error in the loop)."""


@dataclass(frozen=True)
class Tracking:
    """What a run leaves for people to read besides its checkpoints (:mod:`pipeline.tracking`).

    ``mlflow=False``: no MLflow at all (a Tune trial: the sweep's driver tracks what its trials
    report; the workers then sample every node's system metrics, the driver's node included).
    """

    mlflow: bool = True
    parent_run_id: str | None = None              # nest the MLflow run under this one
    tags: Mapping[str, str] = field(default_factory=dict)  # extra MLflow run tags
    artifacts: Sequence[str | Path] = ()          # files logged to the MLflow run when present (params.yaml ...)
    sinks: Sequence[Any] = ()                     # more receivers of every epoch report (``on_epoch(report)``,
                                                  # :mod:`pipeline.tracking.progress`), besides MLflow
    reports_dir: str | Path | None = None         # train.json, train_curve.csv, loss_curve.png (default: a
                                                  # temporary folder; logged to MLflow either way)


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``model`` is the final model on CPU in eval mode.

    ``reused`` is True when a finished run with identical inputs was found and nothing was
    trained: its MLflow run and model are the earlier ones, and no model version was registered,
    unless the tracking store did not hold that run: then they are the new run recording it there.
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


def fit(params: Params, *, run_name: str, storage_path: str, data_dir: str | Path = "data/prepared",
        root: str | Path = ".", tracking: Tracking | None = None, callbacks: Sequence[Any] = (),
        hooks: Sequence[Any] = (), check: Check | None = preflight, identity: RunIdentity | None = None
        ) -> TrainResult:
    """Train ``params`` with Ray Train (DDP) and track it in MLflow; resume ``run_name`` if it exists.

    Args:
        params: the typed params; reads ``model``, ``train``, ``ray``, ``mlflow``, ``data.resize``.
        run_name: Ray run name; the same name and storage path resume that run (or reuse it,
            when it finished with identical inputs).
        storage_path: absolute folder or URI (``s3://...``) shared by all nodes.
        data_dir: folder with ``train.json``/``val.json`` (COCO format) and their images.
        root: the state root: default ``mlflow.db``/``mlruns`` location.
        tracking: MLflow on or off, its parent run, tags and artifacts, more report sinks, where
            the reports go (default: :class:`Tracking` ``()``).
        callbacks: Ray Train ``UserCallback``s, e.g. Tune's ``TuneReportCallback()``.
        hooks: more hooks for the workers' trainer (picklable; sent in ``train_loop_config["hooks"]``).
        check: the checks run before training (default :func:`~pipeline.driver.preflight.preflight`,
            e.g. ``functools.partial(preflight, data_check=...)``); None: none (the caller ran them).
        identity: the run's identity (default: from the params, data and training code).

    Raises:
        PreflightError: the workers can never be placed, storage not writable, MLflow not
            reachable, a node cannot read the data.
        NonFiniteLossError: a loss became NaN/inf (the message names the step and the terms).
        TooManyBadImagesError: more training images could not be decoded than ``data.max_bad_fraction``
            allows (the message lists them).
        TrainingError: Ray Train failed (e.g. more worker failures than ``ray.max_failures``).
    """
    setup_console()
    tracking = tracking or Tracking()
    root, data_dir = Path(root).resolve(), _prepared_data(data_dir)
    storage_path = resolve_storage_path(storage_path, root)
    run_path = storage.join(storage_path, run_name)
    identity = identity or run_identity(result_params(params), data_dir)
    record = RunRecord.read(run_path)
    changed = identity.differences(record.identity) if record else []
    if record and record.finished and not changed:
        return _reuse(params, record, run_path, tracking, root=root, identity=identity)
    if record and changed:  # only with an explicit run name: default names contain the identity
        _check_continuable(run_name, record, changed, params)
        logger.warning("run %s was made with other %s; continuing it as asked", run_name, ", ".join(changed))
    tracking_uri = mlflow_runs.resolve_tracking_uri(params.mlflow.tracking_uri, root) if tracking.mlflow else None
    ensure_ray(params.ray.address)
    if check is not None:
        check(params, storage_path=storage_path, tracking_uri=tracking_uri, data_dir=data_dir)
    ready_autoscaling_coordinator()  # before the Train controller's first 5 s request to it
    mlflow_run, run_tags = None, {}
    if tracking_uri:
        mlflow_run, run_tags = _start_mlflow_run(params, identity, tracking, tracking_uri=tracking_uri,
                                                 run_name=run_name, run_path=run_path, root=root)
    record = RunRecord(RUNNING, run_name, identity.to_dict(), mlflow_run=mlflow_run)
    record.write(run_path)
    with mlflow_runs.failed_on_error(mlflow_run):
        with _tracked_trainer(params, run_name=run_name, storage_path=storage_path, data_dir=data_dir,
                              mlflow_run=mlflow_run, sinks=tracking.sinks, callbacks=callbacks,
                              hooks=hooks) as (trainer, driver_node):
            checkpoint, wall_time = _run_trainer(trainer, run_name, params, mlflow_run if driver_node else None)
        record = replace(record, status=FINISHED, checkpoint_path=checkpoint.path, wall_time_s=round(wall_time, 2))
        result = _finish(params, record, checkpoint, run_path, tracking.reports_dir)
        if mlflow_run is not None:
            result.model_uri = _log_final(params, mlflow_run, result, tracking.artifacts, run_tags)
    replace(record, epochs=len(result.history), model_uri=result.model_uri).write(run_path)
    return result


def _prepared_data(data_dir: str | Path) -> Path:
    """``data_dir`` as an absolute path, once it holds both splits."""
    data_dir = Path(data_dir).resolve()
    for split in ("train.json", "val.json"):
        if not (data_dir / split).is_file():
            raise FileNotFoundError(f"{data_dir / split} not found: run `python -m pipeline prepare` first")
    return data_dir


def _check_continuable(run_name: str, record: RunRecord, changed: list[str], params: Params) -> None:
    """A finished run continues under its name only to train more epochs with the same code and data."""
    if not record.finished:
        return
    hint = "start a new run (--fresh, or another --run-name)"
    if set(changed) - {"params"}:
        raise TrainingError(f"run {run_name} finished with other {', '.join(c for c in changed if c != 'params')}; "
                            f"continuing it would mix them into one model: {hint}")
    if record.epochs >= params.train.epochs:
        raise TrainingError(f"run {run_name} already finished {record.epochs} epoch(s) with other params; "
                            f"continuing it to train.epochs={params.train.epochs} would train nothing: {hint}")


# --------------------------------------------------------------------------- tracking
def _start_mlflow_run(params: Params, identity: RunIdentity, tracking: Tracking, *, tracking_uri: str,
                      run_name: str, run_path: str, root: Path) -> tuple[mlflow_runs.MlflowRun, dict[str, str]]:
    """The run's MLflow run (created, or found again for a resumed run) and its tags."""
    rp = params.ray
    tags = {
        "git_commit": mlflow_runs.git_commit(root), **identity.tags(),
        "world_size": "..".join(map(str, rp.num_workers)) if isinstance(rp.num_workers, list) else str(rp.num_workers),
        "device": "cuda" if rp.use_gpu else "cpu", "ray_run_name": run_name, **tracking.tags,
    }
    run = mlflow_runs.start_run(
        tracking_uri=tracking_uri, experiment_name=params.mlflow.experiment_name, run_name=run_name,
        ray_run=run_path, root=root, params={"model": params.model, "train": params.to_dict()["train"]},
        tags=tags, parent_run_id=tracking.parent_run_id,
    )
    return run, tags


def _system_metrics(params: Params, tracked: bool) -> tuple[SystemMetricsSettings | None, str | None]:
    """What the workers sample (None: nothing), and the driver's node when the driver samples it itself.

    With tracking, the driver samples its own node into the run and its workers need not; a
    driver outside the cluster (Ray Client), or an untracked one, leaves every node to the workers.
    """
    if not params.mlflow.system_metrics:
        return None, None
    driver_node = _driver_node_id() if tracked else None
    return SystemMetricsSettings(params.mlflow.system_metrics_interval_s, skip_node_id=driver_node), driver_node


def _log_final(params: Params, run: mlflow_runs.MlflowRun, result: TrainResult, artifacts: Sequence[str | Path],
               run_tags: dict[str, str]) -> str | None:
    """Log the reports, ``artifacts`` and the final model into ``run`` and close it; the model URI."""
    from pipeline.serving.config import ServingConfig

    return mlflow_runs.log_final(
        run, model=result.model, artifacts=[*map(Path, result.reports.values()), *map(Path, artifacts)],
        log_model=params.mlflow.log_model, registered_model_name=params.mlflow.registered_model_name,
        alias=params.mlflow.registered_model_alias, val_metrics=result.summary, run_tags=run_tags,
        serving=ServingConfig(min_size=params.data.resize.min_size, max_size=params.data.resize.max_size),
    )


# --------------------------------------------------------------------------- the trainer
def build_torch_trainer(params: Params, *, run_name: str, storage_path: str, data_dir: str | Path,
                        callbacks: Sequence[Any] = (), hooks: Sequence[Any] = (),
                        system: SystemMetricsSettings | None = None, channel: Any = None) -> Any:
    """The ``TorchTrainer`` of one run: ``params.ray``'s workers, failures, checkpoints.

    The workers receive ``train_loop_config`` ``{"params", "data_dir", "hooks"}``: ``hooks`` are
    registered on their trainer, after them :class:`~pipeline.tracking.channel.LiveSteps` when
    there is a live ``channel`` (:class:`~pipeline.tracking.channel.LiveChannel`), and
    :class:`~pipeline.tracking.system_metrics.NodeMetrics` when ``system`` says what they sample
    (publishing into ``channel``, if any).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.tracking.channel import LiveSteps
    from pipeline.tracking.system_metrics import NodeMetrics

    rp = params.ray
    score = rp.checkpoint_score_attribute
    hooks = list(hooks)
    if channel is not None:
        hooks.append(LiveSteps(channel))
    if system is not None:
        hooks.append(NodeMetrics(system, channel))
    return TorchTrainer(
        _train_fn,
        train_loop_config={"params": params, "data_dir": str(data_dir), "hooks": hooks},
        scaling_config=ray.train.ScalingConfig(num_workers=rp.scaling_num_workers(), use_gpu=rp.use_gpu,
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


@contextlib.contextmanager
def _tracked_trainer(params: Params, *, run_name: str, storage_path: str, data_dir: Path,
                     mlflow_run: mlflow_runs.MlflowRun | None, sinks: Sequence[Any], callbacks: Sequence[Any],
                     hooks: Sequence[Any]) -> Iterator[tuple[Any, str | None]]:
    """:func:`build_torch_trainer` with the driver-side tracking (MLflow first, then ``sinks``) as a callback
    fed by the epoch reports and a live channel (:mod:`pipeline.tracking.channel`, on the driver's node,
    closed when the block ends); also the driver's node when the driver samples it into ``mlflow_run``."""
    from pipeline.tracking import progress
    from pipeline.tracking.channel import LiveChannel

    system, driver_node = _system_metrics(params, tracked=mlflow_run is not None)
    sinks = list(sinks)
    if mlflow_run is not None:
        sinks.insert(0, progress.MlflowMetrics(mlflow_run["tracking_uri"], mlflow_run["run_id"]))
    channel = LiveChannel.open(_driver_node_id()) if sinks else None
    try:
        callbacks = [progress.ProgressCallback(sinks, channel), *callbacks] if sinks else list(callbacks)
        yield build_torch_trainer(params, run_name=run_name, storage_path=storage_path, data_dir=data_dir,
                                  callbacks=callbacks, hooks=hooks, system=system, channel=channel), driver_node
    finally:
        if channel is not None:
            channel.close()


def _driver_node_id() -> str | None:
    """The Ray node the driver runs on; None for a driver outside the cluster (Ray Client)."""
    try:
        return this_node()[1]
    except Exception:
        return None


def _run_trainer(trainer: Any, run_name: str, params: Params, monitored: mlflow_runs.MlflowRun | None
                 ) -> tuple[Any, float]:
    """Run ``trainer`` (sampling the driver's node into ``monitored``, if any); the final
    checkpoint (a ``ray.train.Checkpoint``) and the wall time in seconds."""
    start = time.perf_counter()
    try:
        with run_monitor(monitored, params.mlflow.system_metrics_interval_s):
            result = trainer.fit()
    except Exception as err:
        raise TrainingError(f"training run {run_name} failed: {err}") from err
    wall_time = time.perf_counter() - start
    outcome = result.return_value or {}
    if outcome.get("status") == "nonfinite":
        raise NonFiniteLossError(outcome["error"])
    if outcome.get("status") == "bad_images":
        from pipeline.data.errors import TooManyBadImagesError

        raise TooManyBadImagesError(outcome["error"])
    if result.checkpoint is None:
        raise TrainingError(f"training run {run_name} finished without a checkpoint")
    return result.checkpoint, wall_time


def _train_fn(config: dict[str, Any]) -> dict[str, Any]:
    # imported inside the worker, so the driver does not pay for torch/detector imports twice
    from pipeline.training.worker import train_loop_per_worker

    return train_loop_per_worker(config)


def _resources_per_worker(params: Params) -> dict[str, float]:
    from pipeline.driver.preflight import worker_request

    return worker_request(params)


# --------------------------------------------------------------------------- results
def _reuse(params: Params, record: RunRecord, run_path: str, tracking: Tracking, *, root: Path,
           identity: RunIdentity) -> TrainResult:
    """The result of the finished run ``record`` describes; nothing is trained.

    With MLflow, the current tracking store must hold its run: the recorded one (nothing is logged
    or registered), else the store's own run of this Ray run (the record points at it), else a new
    run that records the reused model there (:func:`_record_reused`).
    """
    if not record.checkpoint_path or not storage.exists(record.checkpoint_path):
        raise TrainingError(f"run {record.run_name} finished, but its final checkpoint {record.checkpoint_path} is "
                            f"gone; start a new run with --fresh (or remove {run_path})")
    import ray.train

    uri = mlflow_runs.resolve_tracking_uri(params.mlflow.tracking_uri, root) if tracking.mlflow else None
    previous = record.mlflow_run
    tracked = _tracked_run(params, record, uri, run_path) if uri else previous
    same = "same params, data, code and torch/torchvision; nothing to train"
    if uri is None or (tracked and previous and tracked["run_id"] == previous["run_id"]):
        logger.info("reusing finished run %s%s: %s, no new model version", record.run_name,
                    f" (MLflow run {previous['run_id']})" if previous else "", same)
    elif tracked:
        record = replace(record, mlflow_run=tracked,
                         model_uri=mlflow_runs.model_uri_of(tracked, params.mlflow.registered_model_name))
        record.write(run_path)
        logger.info("reusing finished run %s: %s, no new model version; the tracking store %s holds its MLflow run "
                    "%s%s: using that one", record.run_name, same, mlflow_runs.public_uri(uri), tracked["run_id"],
                    f" (its record named run {previous['run_id']} of {mlflow_runs.public_uri(previous['tracking_uri'])})"
                    if previous else "")
    else:
        logger.info("reusing finished run %s: %s; %s: recording the reused model there", record.run_name, same,
                    _not_in_store(previous, uri))
    result = _finish(params, record, ray.train.Checkpoint(record.checkpoint_path), run_path, tracking.reports_dir,
                     reused=True)
    if uri and not tracked:
        record = _record_reused(params, record, result, tracking, tracking_uri=uri, run_path=run_path, root=root,
                                identity=identity)
        result.mlflow_run, result.model_uri = dict(record.mlflow_run), record.model_uri
        logger.info("recorded finished run %s in %s as MLflow run %s: params, tags, %d epoch(s) of metrics, "
                    "reports%s", record.run_name, mlflow_runs.public_uri(uri), record.mlflow_run["run_id"],
                    len(result.history), f", model {record.model_uri}" if record.model_uri else "")
    return result


def _tracked_run(params: Params, record: RunRecord, tracking_uri: str, run_path: str) -> mlflow_runs.MlflowRun | None:
    """The MLflow run of the finished run ``record`` in the store at ``tracking_uri``
    (:func:`~pipeline.tracking.mlflow_runs.find_run`); :class:`PreflightError` when the store cannot be asked."""
    try:
        mlflow_runs.check_reachable(tracking_uri)
        return mlflow_runs.find_run(tracking_uri, run_id=(record.mlflow_run or {}).get("run_id"),
                                    experiment_name=params.mlflow.experiment_name, ray_run=run_path)
    except Exception as err:  # an unreachable store, refused credentials, ...: say which store and why
        raise PreflightError(f"cannot look up the MLflow run of finished run {record.run_name} in the tracking "
                             f"store {mlflow_runs.public_uri(tracking_uri)}: {err}") from err


def _not_in_store(previous: Mapping[str, str] | None, tracking_uri: str) -> str:
    if previous:
        return (f"its MLflow run {previous['run_id']} ({mlflow_runs.public_uri(previous['tracking_uri'])}) is not in "
                f"the tracking store {mlflow_runs.public_uri(tracking_uri)}")
    return f"it was trained without MLflow, so the tracking store {mlflow_runs.public_uri(tracking_uri)} holds no run of it"


def _record_reused(params: Params, record: RunRecord, result: TrainResult, tracking: Tracking, *, tracking_uri: str,
                   run_path: str, root: Path, identity: RunIdentity) -> RunRecord:
    """Record the reused ``result`` in the store at ``tracking_uri`` as a fresh run records itself: a run with
    its params and tags (and which finished run and MLflow run it comes from), its history's epoch metrics,
    the reports and ``tracking.artifacts``, the model and a registry version (``mlflow.registered_model_name``);
    the run record then points at that run."""
    previous = record.mlflow_run
    origin = f"the finished Ray run {run_path}"
    tags = {mlflow_runs.REUSED_FROM_TAG: run_path}
    if previous:
        store = mlflow_runs.public_uri(previous["tracking_uri"])
        tags |= {mlflow_runs.REUSED_RUN_TAG: previous["run_id"], mlflow_runs.REUSED_STORE_TAG: store}
        origin += f" (trained into MLflow run {previous['run_id']} of {store})"
    tags["mlflow.note.content"] = f"Recorded from {origin}; the model was not trained again."
    run, run_tags = _start_mlflow_run(params, identity, replace(tracking, tags={**tracking.tags, **tags}),
                                      tracking_uri=tracking_uri, run_name=record.run_name, run_path=run_path,
                                      root=root)
    with mlflow_runs.failed_on_error(run):
        mlflow_runs.log_history(run, result.history)
        model_uri = _log_final(params, run, result, tracking.artifacts, run_tags)
    record = replace(record, mlflow_run=run, model_uri=model_uri)
    record.write(run_path)
    return record


def _finish(params: Params, record: RunRecord, checkpoint: Any, run_path: str, reports_dir: str | Path | None,
            reused: bool = False) -> TrainResult:
    """The result of the finished run ``record`` describes, from its final ``checkpoint`` (a
    ``ray.train.Checkpoint``): the model, the history, the summary, and the reports written
    into ``reports_dir``. A fresh run and a reused one end here alike."""
    saved = _load_final_state(checkpoint)
    history = sorted(saved["history"], key=lambda r: r["epoch"])
    summary = _summary(history, wall_time=record.wall_time_s, world_size=saved["world_size"], params=params)
    written = _write_reports(history, summary, reports_dir, saved.get("bad_images") or {})
    return TrainResult(
        run_name=record.run_name, run_path=run_path, checkpoint_path=record.checkpoint_path, history=history,
        summary=summary, model=_build_model(saved), model_config=saved["model_config"],
        class_names=saved["class_names"], mlflow_run=dict(record.mlflow_run) if record.mlflow_run else None,
        model_uri=record.model_uri, reports={k: str(v) for k, v in written.items()}, reused=reused,
        identity=dict(record.identity),
    )


def _write_reports(history: list[dict[str, Any]], summary: dict[str, Any],
                   reports_dir: str | Path | None, bad_images: dict[str, str]) -> dict[str, Path]:
    from pipeline.tracking import reports

    out_dir = Path(reports_dir) if reports_dir is not None else Path(tempfile.mkdtemp(prefix="train-reports-"))
    return {
        "train_json": reports.write_summary(summary, out_dir / "train.json"),
        "train_curve_csv": reports.write_curve_csv(history, out_dir / "train_curve.csv"),
        "loss_curve_png": reports.write_loss_png(history, out_dir / "loss_curve.png"),
        "bad_images_json": reports.write_bad_images(bad_images, out_dir / "bad_images.json"),
    }


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


# --------------------------------------------------------------------------- run identity
def default_run_name(params: Params, data_dir: str | Path) -> str:
    """``train-<digest>`` of :func:`pipeline.driver.identity.run_identity`: identical inputs, same name."""
    return f"train-{run_identity(result_params(params), data_dir).digest()}"

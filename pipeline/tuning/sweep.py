"""The sweep: a Ray Tune ``Tuner`` over training runs, resumable, tracked in MLflow.

:func:`run_sweep` validates the space (before Ray starts), names the experiment from a hash
of everything the trials depend on (``<ray.storage_path>/tune/sweep-<hash>``: params, search
space, data, the code of training and sweep, torch/torchvision; see
:mod:`pipeline.driver.identity`), restores it with ``Tuner.restore`` when an interrupted
one is there (searcher and ASHA state included), runs the trials
(:func:`pipeline.tuning.trial.run_trial`) and, once every trial is done, writes
``trials.csv``, ``best_params.yaml`` and the plot, and closes the MLflow runs. A finished
sweep with identical inputs is reused: its outputs are written again from the stored
results, nothing is trained or logged.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.driver import storage
from pipeline.driver.identity import SWEEP_ENTRIES, SWEEP_SKIP, RunIdentity, run_identity
from pipeline.environ import env_restored
from pipeline.params import Params, params_from_dict
from pipeline.tracking.system_metrics import run_monitor
from pipeline.tuning import results as res
from pipeline.tuning.space import (
    Dimension,
    decode_config,
    named_values,
    num_trials,
    parse_space,
    resolve_config,
    to_tune_space,
    trial_params,
    validate_space,
)
from pipeline.tuning.trial import TRIAL_RESOURCES, TrialSpec, run_trial

__all__ = ["SweepOutcome", "experiment_name", "run_sweep", "trial_base"]

logger = logging.getLogger(__name__)

TRIALS_CSV, BEST_PARAMS, PLOT = "trials.csv", "best_params.yaml", "ap_vs_params.png"
STATE_FILE = "sweep.json"  # in the experiment folder: our own state (the MLflow parent run, complete or not)
METRICS = ["AP50", "AP", "AP75"]


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did. ``complete`` is False when the sweep was interrupted."""

    experiment_path: str
    sweep_id: str
    complete: bool
    resumed: bool
    records: list[res.TrialRecord] = field(default_factory=list)
    best: res.TrialRecord | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    train_command: str | None = None
    reused: bool = False


def trial_base(params: Params) -> dict[str, Any]:
    """``params`` as a dict with the sweep's per-trial settings applied.

    ``tune.epochs`` replaces ``train.epochs``, validation runs every epoch (ASHA needs it),
    ``tune.workers_per_trial``/``cpus_per_worker``/``use_gpu`` replace the ``ray`` ones when
    set, one checkpoint is kept, and no trial logs or registers a model.
    """
    base = params.to_dict()
    t = params.tune
    overrides: dict[str, Any] = {
        "train.epochs": t.epochs, "train.val_every": 1, "ray.checkpoints_to_keep": 1,
        "ray.checkpoint_score_attribute": None, "mlflow.log_model": False, "mlflow.registered_model_name": None,
    }
    for key, value in (("ray.num_workers", t.workers_per_trial), ("ray.cpus_per_worker", t.cpus_per_worker),
                       ("ray.use_gpu", t.use_gpu)):
        if value is not None:
            overrides[key] = value
    for key, value in overrides.items():
        section, name = key.split(".")
        if name in base[section]:
            base[section][name] = value
    return base


def sweep_identity(params: Params, data_dir: str | Path) -> RunIdentity:
    """What the sweep's results depend on: the trials' params, the sweep settings, the data, the
    code that the workers and the sweep import (:data:`pipeline.driver.identity.SWEEP_ENTRIES`;
    not the driver side or tracking) and torch/torchvision.

    ``max_concurrent_trials``, ``held_out`` (a check run after the sweep) and where things are
    stored or tracked are left out: they do not change the results.
    """
    base = trial_base(params)
    tune = {k: v for k, v in base.pop("tune").items() if k not in ("max_concurrent_trials", "held_out")}
    keyed = {"model": base["model"], "train": base["train"], "resize": base["data"]["resize"],
             "validation": [base["evaluate"][k] for k in ("batch_size", "score_threshold")],
             "workers": [base["ray"][k] for k in ("num_workers", "use_gpu")], "tune": tune}
    keyed["named"] = named_values(params, parse_space(params.tune.space))  # what `fitted` stands for now
    return run_identity(keyed, data_dir, entries=SWEEP_ENTRIES, skip=SWEEP_SKIP)


def experiment_name(params: Params, data_dir: str | Path) -> str:
    """``sweep-<12 hex>`` of :func:`sweep_identity`.

    Rerunning the same command finds the same folder (and resumes it, or reuses it once
    finished); changing the space, the params, the data or the code starts a new sweep.
    """
    return f"sweep-{sweep_identity(params, data_dir).digest()}"


def run_sweep(params: Params, *, data_dir: str | Path = "data/prepared", out_dir: str | Path = "reports/tune",
              root: str | Path | None = None, fresh: bool = False) -> SweepOutcome:
    """Run (or resume, or reuse) the sweep of ``params.tune`` and write its outputs into ``out_dir``.

    ``root``: the state root for the default storage path and tracking store (default:
    :func:`pipeline.driver.storage.state_root`).

    Raises:
        ParamsError: the search space is invalid (before Ray starts).
        FileNotFoundError: the prepared data is missing.
        PreflightError: the trials' workers can never be placed, a node cannot read the data...
    """
    dims = validate_space(params)
    root = Path(root).resolve() if root is not None else storage.state_root()
    data_dir = Path(data_dir).resolve()
    for split in ("train.json", "val.json"):
        if not (data_dir / split).is_file():
            raise FileNotFoundError(f"{data_dir / split} not found: run `python -m pipeline prepare` first")

    from ray import tune

    from pipeline import driver
    from pipeline.driver.cluster import ready_autoscaling_coordinator
    from pipeline.tracking import mlflow_runs as train_tracking
    from pipeline.tracking import trials as tracking

    t = params.tune
    identity = sweep_identity(params, data_dir)
    sweep_id = f"sweep-{identity.digest()}"
    storage_path = driver.resolve_storage_path(params.ray.storage_path, root)
    tune_storage = storage.join(storage_path, "tune")
    experiment_path = storage.join(tune_storage, sweep_id)
    state_path = storage.join(experiment_path, STATE_FILE)
    total = num_trials(params, dims)
    base = trial_base(params)
    state = storage.read_json(state_path) or {}
    if state.get("complete") and not fresh and tune.Tuner.can_restore(experiment_path):
        grid = tune.ResultGrid(tune.ExperimentAnalysis(experiment_path))
        return _reuse(params, dims, grid, state, Path(out_dir), sweep_id, experiment_path, root=root,
                      identity=identity, data_dir=data_dir)

    started = driver.ensure_ray(params.ray.address)
    try:
        spec = TrialSpec(base=base, data_dir=str(data_dir), train_storage=storage.join(experiment_path, "train"),
                         metric=t.metric, sweep_id=sweep_id, root=str(root), dims=tuple(dims), search=t.search,
                         named=named_values(params, dims))
        trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), TRIAL_RESOURCES)
        if fresh and tune.Tuner.can_restore(experiment_path):
            logger.info("--fresh: removing the previous sweep %s", experiment_path)
            storage.remove(experiment_path)
            state = {}
        resumed = tune.Tuner.can_restore(experiment_path)
        state = state if resumed else {}
        tracking_uri = train_tracking.resolve_tracking_uri(params.mlflow.tracking_uri, root)
        # once for all trials: they run with the same workers and data (and skip their own preflight)
        driver.preflight(params_from_dict(base), storage_path=storage_path, tracking_uri=tracking_uri,
                         data_dir=data_dir)
        ready_autoscaling_coordinator()  # before the trials' Train controllers' first 5 s request to it
        parent = tracking.start_parent(
            tracking_uri=tracking_uri, experiment_name=params.mlflow.experiment_name, sweep_id=sweep_id,
            experiment_path=experiment_path, root=root, run_id=state.get("parent_run_id"),
            params={"tune": params.to_dict()["tune"], "data_dir": str(data_dir)},
            tags={f"tune.{k}": v for k, v in identity.tags().items()},
        )
        tuner = _tuner(params, dims, trainable, spec, parent, resumed=resumed, identity=identity,
                       tune_storage=tune_storage, total=total)
        with _lenient_metric_check(), run_monitor(parent if params.mlflow.system_metrics else None,
                                                  params.mlflow.system_metrics_interval_s):
            grid = tuner.fit()
        return _conclude(params, dims, grid, parent, out_dir=Path(out_dir), sweep_id=sweep_id,
                         experiment_path=experiment_path, resumed=resumed, total=total)
    finally:
        if started:
            import ray

            ray.shutdown()


def _tuner(params: Params, dims: list[Dimension], trainable: Any, spec: TrialSpec, parent: dict[str, str], *,
           resumed: bool, identity: RunIdentity, tune_storage: str, total: int) -> Any:
    """The sweep's ``Tuner``: the interrupted one restored, or a new one with the MLflow tracker of
    its trials (the sweep's state file then names the parent run)."""
    from ray import tune

    from pipeline.tracking import trials as tracking

    t, sweep_id = params.tune, spec.sweep_id
    experiment_path = storage.join(tune_storage, sweep_id)
    if resumed:
        logger.info("resuming sweep %s from %s (MLflow run %s)", sweep_id, experiment_path, parent["run_id"])
        return tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)
    logger.info("sweep %s: %s trial(s) of %s epoch(s), %s search, ASHA on %s -> %s (MLflow run %s)",
                sweep_id, total, t.epochs, t.search, t.metric, experiment_path, parent["run_id"])
    tracker = tracking.TrialTracker(
        tracking_uri=parent["tracking_uri"], parent_run_id=parent["run_id"],
        experiment_name=params.mlflow.experiment_name, root=spec.root, spec=spec,
        tags={"tune.sweep_id": sweep_id, **identity.tags()})
    tuner = _new_tuner(params, dims, trainable, tune_storage, sweep_id, tracker)
    storage.write_json(storage.join(experiment_path, STATE_FILE), {
        "parent_run_id": parent["run_id"], "tracking_uri": parent["tracking_uri"], "sweep_id": sweep_id,
        "trials": total, "identity": identity.to_dict()})
    return tuner


def _conclude(params: Params, dims: list[Dimension], grid: Any, parent: dict[str, str], *, out_dir: Path,
              sweep_id: str, experiment_path: str, resumed: bool, total: int) -> SweepOutcome:
    """After ``tuner.fit()``: an interrupted sweep's parent run marked so, or every trial done and the
    outputs written (:func:`_finish`) and the sweep's state marked complete."""
    from pipeline.tracking import trials as tracking

    done = _trials_done(experiment_path)
    if done < total:
        logger.info("sweep interrupted after %s/%s trial(s); rerun the same command to resume "
                    "(or add --fresh to start over)", done, total)
        tracking.mark_interrupted(parent)
        return SweepOutcome(experiment_path, sweep_id, complete=False, resumed=resumed, mlflow_run_id=parent["run_id"])
    outcome = _finish(params, dims, grid, parent, out_dir, sweep_id, experiment_path, resumed)
    state_path = storage.join(experiment_path, STATE_FILE)
    storage.write_json(state_path, {**(storage.read_json(state_path) or {}), "complete": True})
    best = outcome.best
    logger.info("best trial %s: %s = %s; train it with:\n  %s", best.trial_id if best else None, params.tune.metric,
                best.last(params.tune.metric) if best else None, outcome.train_command)
    return outcome


def _new_tuner(params: Params, dims: list[Dimension], trainable: Any, tune_storage: str, sweep_id: str,
               tracker: Any) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipeline.tuning.callbacks import InterruptAfter
    from pipeline.tuning.searchers import build_search_alg

    t = params.tune
    scheduler = ASHAScheduler(time_attr="epoch", metric=t.metric, mode=t.mode, max_t=t.epochs,
                              grace_period=min(t.grace_period, t.epochs), reduction_factor=t.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(dims, t.search),
        tune_config=tune.TuneConfig(
            search_alg=build_search_alg(t), scheduler=scheduler, num_samples=t.num_samples,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(name=sweep_id, storage_path=tune_storage, verbose=1,
                                  callbacks=[InterruptAfter(), tracker]),
    )


def _trials_done(experiment_path: str) -> int:
    """Trials that ended (finished, stopped by ASHA, or failed) according to the saved experiment state.

    Not the ``ResultGrid``: after an interruption Tune stops the running trials in memory
    (TERMINATED) but saved them as RUNNING, which is what a restore resumes.
    """
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    analysis = ExperimentAnalysis(experiment_path)
    return sum(trial.status in (Trial.TERMINATED, Trial.ERROR) for trial in analysis.trials)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def _records(params: Params, dims: list[Dimension], grid: Any) -> tuple[list[res.TrialRecord], res.TrialRecord | None]:
    t = params.tune
    records = [_record(result, t.epochs, dims, t.search) for result in grid]
    records.sort(key=lambda r: r.trial_id)
    best = None
    try:
        best = res.best_trial(records, t.metric, t.mode)
    except ValueError:
        pass
    return records, best


def _reuse(params: Params, dims: list[Dimension], grid: Any, state: dict[str, Any], out_dir: Path, sweep_id: str,
           experiment_path: str, *, root: Path, identity: RunIdentity, data_dir: Path) -> SweepOutcome:
    """A finished sweep reused: nothing is trained. When the current tracking store holds its parent
    run, the outputs are written again from the stored results (MLflow only read); when it does not
    (another server, a deleted ``mlflow.db``), the sweep is recorded there first, as a fresh sweep
    records itself (parent, one child per trial with its epoch history, outputs), tagged as reused."""
    from pipeline.tracking import mlflow_runs as train_tracking
    from pipeline.tracking import trials as tracking

    tracking_uri = train_tracking.resolve_tracking_uri(params.mlflow.tracking_uri, root)
    parent_run_id = state.get("parent_run_id")
    try:
        train_tracking.check_reachable(tracking_uri)
        known = tracking.parent_known(tracking_uri, parent_run_id)
    except Exception as err:  # an unreachable store, refused credentials, ...: say which store and why
        from pipeline.driver import PreflightError

        raise PreflightError(f"cannot look up the MLflow run of finished sweep {sweep_id} in the tracking store "
                             f"{train_tracking.public_uri(tracking_uri)}: {err}") from err
    same = "same params, space, data, code and torch/torchvision; nothing to train"
    if not known:
        logger.info("reusing finished sweep %s: %s; its MLflow run %s is not in the tracking store %s: recording "
                    "the sweep there", sweep_id, same, parent_run_id, train_tracking.public_uri(tracking_uri))
        outcome = _record_reused(params, dims, grid, state, out_dir, sweep_id, experiment_path, root=root,
                                 identity=identity, data_dir=data_dir, tracking_uri=tracking_uri)
        return replace(outcome, reused=True)
    logger.info("reusing finished sweep %s (MLflow run %s): %s", sweep_id, parent_run_id, same)
    records, best = _records(params, dims, grid)
    runs = tracking.child_runs(tracking_uri, parent_run_id)
    for record in records:
        if record.trial_id in runs:
            record.mlflow_run_id = runs[record.trial_id].info.run_id
    outputs, command = _write_outputs(params, dims, records, best, out_dir, sweep_id)
    return SweepOutcome(experiment_path, sweep_id, complete=True, resumed=False, records=records, best=best,
                        outputs=outputs, mlflow_run_id=parent_run_id, train_command=command, reused=True)


def _record_reused(params: Params, dims: list[Dimension], grid: Any, state: dict[str, Any], out_dir: Path,
                   sweep_id: str, experiment_path: str, *, root: Path, identity: RunIdentity, data_dir: Path,
                   tracking_uri: str) -> SweepOutcome:
    """Record the finished sweep into the store at ``tracking_uri``; the sweep's state then names that run."""
    from pipeline.tracking import mlflow_runs as train_tracking
    from pipeline.tracking import trials as tracking

    reused = {"tune.reused_from": experiment_path}
    if state.get("parent_run_id"):
        reused |= {"tune.reused_mlflow_run": state["parent_run_id"],
                   "tune.reused_tracking_uri": train_tracking.public_uri(state.get("tracking_uri") or "")}
    parent = tracking.start_parent(
        tracking_uri=tracking_uri, experiment_name=params.mlflow.experiment_name, sweep_id=sweep_id,
        experiment_path=experiment_path, root=root, params={"tune": params.to_dict()["tune"], "data_dir": str(data_dir)},
        tags={**{f"tune.{k}": v for k, v in identity.tags().items()}, **reused})
    base, named = trial_base(params), named_values(params, dims)
    records, _ = _records(params, dims, grid)
    tracking.record_reused_trials(
        parent, experiment_name=params.mlflow.experiment_name, root=root,
        train_storage=storage.join(experiment_path, "train"), tags={"tune.sweep_id": sweep_id, **identity.tags()},
        trials=[(r, trial_params(base, resolve_config(r.config, named))) for r in records])
    outcome = _finish(params, dims, grid, parent, out_dir, sweep_id, experiment_path, resumed=False)
    state_path = storage.join(experiment_path, STATE_FILE)
    storage.write_json(state_path, {**state, "parent_run_id": parent["run_id"], "tracking_uri": tracking_uri})
    return outcome


def _write_outputs(params: Params, dims: list[Dimension], records: list[res.TrialRecord],
                   best: res.TrialRecord | None, out_dir: Path, sweep_id: str) -> tuple[dict[str, Path], str | None]:
    t = params.tune
    base = params.to_dict()
    named = named_values(params, dims)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"trials_csv": res.write_trials_csv(res.trials_table(records, dims, METRICS, best), out_dir / TRIALS_CSV),
               "plot": res.plot_trials(records, dims, t.metric, out_dir / PLOT, best)}
    command = None
    if best is not None:
        outputs["best_params"] = res.write_best_params(best, base, out_dir / BEST_PARAMS, metric=t.metric,
                                                       sweep_id=sweep_id, named=named)
        command = res.train_best_command(best, named)
    return outputs, command


def _finish(params: Params, dims: list[Dimension], grid: Any, parent: dict[str, str], out_dir: Path,
            sweep_id: str, experiment_path: str, resumed: bool) -> SweepOutcome:
    from pipeline.tracking import trials as tracking

    records, best = _records(params, dims, grid)
    tracking.close_child_runs(parent["tracking_uri"], parent["run_id"], records, best)
    outputs, command = _write_outputs(params, dims, records, best, out_dir, sweep_id)
    summary = {"trials": len(records), "finished": sum(r.status == res.FINISHED for r in records),
               "stopped_early": sum(r.status == res.STOPPED for r in records),
               "errors": sum(r.status == res.ERROR for r in records), "train_best_command": command or "",
               "experiment_path": experiment_path}
    tracking.finish_parent(parent, best=best, metric=params.tune.metric, summary=summary, artifacts=list(outputs.values()),
                           status="FINISHED" if best is not None else "FAILED")
    return SweepOutcome(experiment_path, sweep_id, complete=True, resumed=resumed, records=records, best=best,
                        outputs=outputs, mlflow_run_id=parent["run_id"], train_command=command)


def _record(result: Any, epochs: int, dims: list[Dimension], search: str) -> res.TrialRecord:
    """A Tune ``Result`` as a :class:`TrialRecord`: one history row per epoch (the latest report wins),
    its config as params values (:func:`~pipeline.tuning.space.decode_config`)."""
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    rows: dict[int, dict[str, Any]] = {}
    frame = result.metrics_dataframe
    if frame is not None and "epoch" in frame:
        for row in frame.to_dict("records"):
            keep = {k: v for k, v in row.items() if k in ("epoch", "anchor_bpr", "anchor_mean_best_iou", "loss", *METRICS)
                    and v is not None and v == v}  # v == v drops NaN
            if "epoch" in keep:
                rows[int(keep["epoch"])] = {**rows.get(int(keep["epoch"]), {}), **keep}
    config = decode_config(dims, dict(result.config or {}), search)
    record = res.TrialRecord(trial_id, config, [rows[e] for e in sorted(rows)])
    record.status = res.trial_status(record, epochs, errored=result.error is not None)
    return record


def _lenient_metric_check() -> contextlib.AbstractContextManager[None]:
    """The epoch-0 report (anchor fit, no AP yet) lacks ``tune.metric``; Tune would reject it.
    The trial checks instead that training reported the metric."""
    return env_restored(TUNE_DISABLE_STRICT_METRIC_CHECKING="1")

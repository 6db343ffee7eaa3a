"""MLflow for a sweep, from the sweep's driver: one parent run, one nested child run per trial.

No trial and no worker touches the tracking store. :class:`TrialTracker` (a Ray Tune callback,
so it runs in the sweep's driver) creates each trial's child run when the trial starts, with
the trial's params and the ``mlflow.parentRunId`` tag, and logs every result the trial
reports: the anchor fit at epoch 0, then rank 0's per-epoch metrics and progress rows and the
system metrics its workers sampled on each of their nodes, which the trial's Ray Train run
forwards to Tune (:mod:`pipeline.tracking.progress`). A trial that
ASHA stops is killed mid-training; :func:`close_child_runs` then gives every child its final
status (``FINISHED``, or ``KILLED`` with ``tune.status=stopped_early``), its anchor fit and the
``tune.best`` tag. The parent gets the results table and the plot, and the system metrics of
the sweep driver's node (:func:`pipeline.tracking.system_metrics.driver_monitor`, in
:mod:`pipeline.tuning.sweep`).
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipeline.tuning.results import ERROR, FINISHED, STOPPED, TrialRecord

__all__ = ["TrialTracker", "child_runs", "close_child_runs", "finish_parent", "mark_interrupted", "parent_known",
           "record_reused_trials", "start_child", "start_parent"]

_FINAL_STATUS = {FINISHED: "FINISHED", STOPPED: "KILLED", ERROR: "FAILED"}

logger = logging.getLogger(__name__)  # printed as [tune] (pipeline.console)


def start_parent(*, tracking_uri: str, experiment_name: str, sweep_id: str, experiment_path: str,
                 root: Path, params: dict[str, Any], run_id: str | None = None,
                 tags: dict[str, str] | None = None) -> dict[str, str]:
    """Create the sweep's parent run, or reopen ``run_id`` (a resumed sweep)."""
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import mlflow_runs as tracking

    if run_id:
        client = MlflowClient(tracking_uri)
        run = client.get_run(run_id)
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        client.set_tag(run_id, "tune.resumed", "true")
        return {"run_id": run_id, "tracking_uri": tracking_uri, "experiment_id": run.info.experiment_id}
    # a unique ray_run tag: a fresh sweep (--fresh) must not reopen the previous parent
    run = tracking.start_run(
        tracking_uri=tracking_uri, experiment_name=experiment_name, run_name=sweep_id,
        ray_run=f"{experiment_path}#{uuid.uuid4().hex[:8]}", root=root, params=params,
        tags={"tune.sweep_id": sweep_id, "tune.experiment_path": experiment_path, "tune.role": "sweep", **(tags or {})},
    )
    return dict(run)


def start_child(*, tracking_uri: str, experiment_name: str, parent_run_id: str, root: Path, trial_id: str,
                train_storage: str, values: dict[str, Any], params: Any, tags: dict[str, str]) -> str:
    """Create the child run of trial ``trial_id`` under the sweep's parent: the trial's model and train
    params, its sampled ``values`` (``tune.config``), the trial id; returns its run id."""
    import json

    from pipeline.tracking import mlflow_runs as tracking

    run = tracking.start_run(
        tracking_uri=tracking_uri, experiment_name=experiment_name, run_name=trial_id,
        ray_run=f"{train_storage.rstrip('/')}/{trial_id}", root=root,
        params={"model": params.model, "train": params.to_dict()["train"]},
        tags={**tags, "tune.trial_id": trial_id, "tune.config": json.dumps(values, sort_keys=True, default=str),
              "ray_run_name": trial_id}, parent_run_id=parent_run_id,
    )
    return run["run_id"]


def record_reused_trials(parent: dict[str, str], *, experiment_name: str, root: Path, train_storage: str,
                         trials: list[tuple[TrialRecord, Any]], tags: dict[str, str]) -> None:
    """A finished sweep's trials recorded into ``parent`` (a store that does not know the sweep):
    for each ``(record, params)`` a child run as :class:`TrialTracker` makes one, with the
    epoch history the trial reported (:func:`close_child_runs` then gives the final status)."""
    from pipeline.tracking import mlflow_runs as tracking

    for record, params in trials:
        run_id = start_child(tracking_uri=parent["tracking_uri"], experiment_name=experiment_name,
                             parent_run_id=parent["run_id"], root=root, trial_id=record.trial_id,
                             train_storage=train_storage, values=record.config, params=params, tags=tags)
        tracking.log_history({"run_id": run_id, "tracking_uri": parent["tracking_uri"]}, record.history)


def parent_known(tracking_uri: str, run_id: str | None) -> bool:
    """Whether the store at ``tracking_uri`` holds the (not deleted) sweep parent run ``run_id``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not run_id:
        return False
    try:
        return MlflowClient(tracking_uri).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False


def child_runs(tracking_uri: str, parent_run_id: str) -> dict[str, Any]:
    """The parent's child runs by trial id (the ``tune.trial_id`` tag); the newest wins."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=10000)
    return {r.data.tags["tune.trial_id"]: r for r in runs if "tune.trial_id" in r.data.tags}


def close_child_runs(tracking_uri: str, parent_run_id: str, records: list[TrialRecord],
                     best: TrialRecord | None) -> None:
    """Final status, ``tune.status``/``tune.best`` tags and the anchor fit on every trial's run."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = child_runs(tracking_uri, parent_run_id)
    for record in records:
        run = runs.get(record.trial_id)
        if run is None:
            continue
        record.mlflow_run_id = run.info.run_id
        tags = [RunTag("tune.status", record.status),
                RunTag("tune.best", str(best is not None and record.trial_id == best.trial_id).lower())]
        metrics = [Metric(key, float(value), run.info.start_time, 0)
                   for key in ("anchor_bpr", "anchor_mean_best_iou") if (value := record.last(key)) is not None]
        client.log_batch(run.info.run_id, metrics=metrics, tags=tags)
        status = _FINAL_STATUS[record.status]
        if run.info.status != status:
            client.set_terminated(run.info.run_id, status=status)


def finish_parent(run: dict[str, str], *, best: TrialRecord | None, metric: str, summary: dict[str, Any],
                  artifacts: list[Path], status: str = "FINISHED") -> None:
    """Log the sweep's summary metrics/tags and files into the parent run and close it."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient


    client = MlflowClient(run["tracking_uri"])
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if isinstance(v, int | float)]
    tags = [RunTag(f"tune.{k}", str(v)) for k, v in summary.items() if not isinstance(v, int | float)]
    if best is not None:
        tags.append(RunTag("tune.best_trial_id", best.trial_id))
        if best.mlflow_run_id:
            tags.append(RunTag("tune.best_run_id", best.mlflow_run_id))
        if (value := best.last(metric)) is not None:
            metrics.append(Metric(f"best_{metric}", float(value), now, 0))
    client.log_batch(run["run_id"], metrics=metrics, tags=tags)
    for path in artifacts:
        if path.is_file():
            client.log_artifact(run["run_id"], str(path))
    client.set_terminated(run["run_id"], status=status)


def mark_interrupted(run: dict[str, str]) -> None:
    """An interrupted sweep's parent is KILLED until the rerun reopens it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run["tracking_uri"])
    client.set_tag(run["run_id"], "tune.interrupted", "true")
    client.set_terminated(run["run_id"], status="KILLED")


class TrialTracker(Callback):
    """Driver-side MLflow tracking of the trials (a Ray Tune ``Callback``; pickled with the sweep).

    Args:
        tracking_uri, parent_run_id: the sweep's parent run; experiment_name, root: where it is.
        spec: the trials' :class:`~pipeline.tuning.trial.TrialSpec` (base params, where their Ray Train
            runs are, and how Tune's config decodes into params values).
        tags: extra tags on every child run (the sweep id, its code fingerprint ...).
    """

    def __init__(self, *, tracking_uri: str, parent_run_id: str, experiment_name: str, root: str,
                 spec: Any, tags: dict[str, str]):
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self.experiment_name, self.root = experiment_name, root
        self.spec, self.tags = spec, dict(tags)
        self._runs: dict[str, str] = {}   # trial id -> MLflow run id (rebuilt from MLflow after a restore)
        self._sinks: dict[str, Any] = {}  # trial id -> its MlflowMetrics (numbers each node's samples)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}, "_sinks": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_sinks": {}, **state})

    def run_id(self, trial: Any) -> str:
        """The trial's child run: found under the parent (a resumed sweep), else created."""
        from pipeline.tuning.trial import trial_values

        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        existing = child_runs(self.tracking_uri, self.parent_run_id).get(trial_id)
        if existing is not None:
            self._runs[trial_id] = existing.info.run_id
            return existing.info.run_id
        values, params = trial_values(self.spec, dict(trial.config or {}))
        run_id = start_child(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                             parent_run_id=self.parent_run_id, root=Path(self.root), trial_id=trial_id,
                             train_storage=self.spec.train_storage, values=values, params=params, tags=self.tags)
        self._runs[trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard(trial, lambda: self.run_id(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from pipeline.tracking import progress

        def log() -> None:
            if trial.trial_id not in self._sinks:
                self._sinks[trial.trial_id] = progress.MlflowMetrics(self.tracking_uri, self.run_id(trial))
            progress.dispatch([self._sinks[trial.trial_id]], progress.EpochReport.from_metrics(result))

        self._guard(trial, log)

    def _guard(self, trial: Any, action: Any) -> None:
        try:
            action()
        except Exception as err:  # tracking trouble must not stop the sweep
            logger.warning("MLflow tracking of trial %s failed: %s: %s", trial.trial_id, type(err).__name__, err)

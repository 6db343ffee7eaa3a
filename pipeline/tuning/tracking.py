"""MLflow for a sweep: one parent run, one nested child run per trial.

The child runs are created by the training driver (rank 0 logs the per-epoch metrics into
them) with the ``mlflow.parentRunId`` tag pointing at the sweep's run. A trial that ASHA
stops is killed mid-training and leaves its run RUNNING; :func:`close_child_runs` gives
every child its final status (``FINISHED``, or ``KILLED`` with ``tune.status=stopped_early``),
its anchor fit and the ``tune.best`` tag. The parent gets the results table and the plot.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.tuning.results import ERROR, FINISHED, STOPPED, TrialRecord

__all__ = ["child_runs", "close_child_runs", "finish_parent", "mark_interrupted", "start_parent"]

_FINAL_STATUS = {FINISHED: "FINISHED", STOPPED: "KILLED", ERROR: "FAILED"}


def start_parent(*, tracking_uri: str, experiment_name: str, sweep_id: str, experiment_path: str,
                 root: Path, params: dict[str, Any], run_id: str | None = None) -> dict[str, str]:
    """Create the sweep's parent run, or reopen ``run_id`` (a resumed sweep)."""
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    from pipeline.training import tracking

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
        tags={"tune.sweep_id": sweep_id, "tune.experiment_path": experiment_path, "tune.role": "sweep"},
    )
    return dict(run)


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

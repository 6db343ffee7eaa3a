"""Training progress from the workers to the driver: the epoch report and where it goes.

Workers never write to the tracking store. Once per epoch every rank calls
``ray.train.report`` (a barrier Ray Train needs anyway for the checkpoint); rank 0's metrics
(:func:`epoch_metrics`) carry the epoch's row (epoch, loss terms, lr, throughput, validation AP,
world size) and the progress rows it printed every ``train.log_every`` steps, so step-level
curves reach the tracking store without a report per step.

Every report arrives in one place on the driver's side: :class:`ProgressCallback`, a Ray Train
``UserCallback`` that runs in the Train controller (which Ray places on the driver's node, so a
local ``sqlite:///`` store works on any cluster). It turns the per-rank metrics into an
:class:`EpochReport` and hands it to each *sink*: :class:`MlflowMetrics` today; anything with
an ``on_epoch(report)`` method (live DVC metrics, ...) can be added. A Ray Tune sweep forwards
the same metrics to its driver (``TuneReportCallback``), where
:class:`pipeline.tuning.tracking.TrialTracker` feeds them to the same sinks.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray.train import UserCallback

__all__ = ["STEPS_KEY", "EpochReport", "MetricsSink", "MlflowMetrics", "ProgressCallback", "epoch_metrics"]

STEPS_KEY = "steps"  # rank 0's progress rows inside its epoch report
EPOCH_PREFIX, STEP_PREFIX = "epoch/", "train/"  # MLflow metric names: epoch/loss (step = epoch), train/loss
# Keys that Ray Tune adds to every result (not training metrics).
_TUNE_KEYS = {"training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp",
              "timesteps_total", "timesteps_since_restore", "iterations_since_restore", "episodes_total", "pid",
              "done", "date", "hostname", "node_ip", "config", "trial_id", "experiment_tag", "checkpoint_dir_name",
              "checkpoint_path", "should_checkpoint"}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def epoch_metrics(row: dict[str, Any], steps: list[dict[str, float]] | None) -> dict[str, Any]:
    """What a rank reports at the end of an epoch: the row's numbers, plus rank 0's ``steps``."""
    out: dict[str, Any] = {k: v for k, v in row.items() if _number(v)}
    if steps is not None:
        out[STEPS_KEY] = [dict(s) for s in steps]
    return out


@dataclass
class EpochReport:
    """One epoch (or, in a sweep, an ``epoch == 0`` pre-training report) as the driver sees it.

    ``metrics``: the epoch's numbers (``loss``, ``lr``, ``AP50``, ``world_size``...);
    ``steps``: rank 0's progress rows, each with its global ``step``.
    """

    epoch: int
    metrics: dict[str, float]
    steps: list[dict[str, float]] = field(default_factory=list)
    checkpoint_path: str | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], checkpoint_path: str | None = None) -> EpochReport | None:
        """Parse rank 0's report (or a Tune result, whose own keys are ignored); None without ``epoch``."""
        if not _number(metrics.get("epoch")):
            return None
        numbers = {k: float(v) for k, v in metrics.items()
                   if k not in _TUNE_KEYS and k != "epoch" and _number(v)}
        steps = [{k: float(v) for k, v in row.items() if _number(v)}
                 for row in metrics.get(STEPS_KEY) or [] if isinstance(row, dict) and _number(row.get("step"))]
        return cls(int(metrics["epoch"]), numbers, steps, checkpoint_path or metrics.get("checkpoint_path"))

    @classmethod
    def from_workers(cls, metrics_per_rank: list[dict[str, Any]], checkpoint_path: str | None = None
                     ) -> EpochReport | None:
        """The report of a Ray Train round: rank 0's metrics (the first; the one with ``steps``)."""
        if not metrics_per_rank:
            return None
        chosen = next((m for m in metrics_per_rank if STEPS_KEY in m), metrics_per_rank[0])
        return cls.from_metrics(chosen, checkpoint_path)


class MetricsSink(Protocol):
    """Receives every epoch report of one run, in order (a repeated epoch arrives again)."""

    def on_epoch(self, report: EpochReport) -> None: ...


class MlflowMetrics:
    """Logs reports into one MLflow run: ``epoch/<k>`` at step = epoch, ``train/<k>`` at the global step.

    Picklable (Ray ships it to the Train controller); the client is made on first use.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "_client": None}

    def on_epoch(self, report: EpochReport) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        now = int(time.time() * 1000)
        metrics = [Metric(f"{STEP_PREFIX}{k}", v, now, int(row["step"]))
                   for row in report.steps for k, v in row.items() if k != "step"]
        metrics += [Metric(f"{EPOCH_PREFIX}{k}" if report.epoch > 0 else k, v, now, report.epoch)
                    for k, v in report.metrics.items()]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per call
            self._client.log_batch(self.run_id, metrics=metrics[i:i + 1000])


def _warn(message: str) -> None:
    print(f"[train] warning: {message}", file=sys.stderr, flush=True)


def dispatch(sinks: list[MetricsSink], report: EpochReport | None) -> None:
    """Hand ``report`` to every sink; a failing sink is reported and does not stop the training."""
    if report is None:
        return
    for sink in sinks:
        try:
            sink.on_epoch(report)
        except Exception as err:  # tracking trouble must not kill a training run
            _warn(f"{type(sink).__name__} could not record epoch {report.epoch}: {type(err).__name__}: {err}")


class ProgressCallback(UserCallback):
    """The driver-side end of every rank's reports (a Ray Train ``UserCallback``): parse, dispatch to sinks."""

    def __init__(self, sinks: list[MetricsSink]):
        self.sinks = list(sinks)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        dispatch(self.sinks, EpochReport.from_workers(metrics, getattr(checkpoint, "path", None)))

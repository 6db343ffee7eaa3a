"""Training progress from the workers to the driver: the epoch report and where it goes.

Workers never write to the tracking store. Once per epoch every rank calls
``ray.train.report`` (a barrier Ray Train needs anyway for the checkpoint); rank 0's metrics
(:func:`epoch_metrics`) carry the epoch's row (epoch, loss terms, lr, throughput, validation AP,
world size) and the progress rows it printed every ``train.log_every`` steps, so step-level
curves reach the tracking store without a report per step.

The local rank 0 of each node that samples its system metrics
(:mod:`pipeline.tracking.system_metrics`) adds the samples it took during the epoch
(``system``), and rank 0's first report after a (re)start carries the whole history of the run
so far (``history``), so that a sink that rewrites its files from scratch (live DVC metrics)
never shows an epoch twice after a resume or a restart.

Every report arrives in one place on the driver's side: :class:`ProgressCallback`, a Ray Train
``UserCallback`` that runs in the Train controller (which Ray places on the driver's node, so a
local ``sqlite:///`` store works on any cluster). It turns the per-rank metrics into an
:class:`EpochReport` and hands it to each *sink*: anything with an ``on_epoch(report)`` method,
:class:`MlflowMetrics` and the live DVC metrics of :mod:`pipeline.tracking.live`. A Ray Tune
sweep forwards the same metrics to its driver (:class:`pipeline.tuning.callbacks.TrialReport`),
where :class:`pipeline.tracking.trials.TrialTracker` feeds them to :class:`MlflowMetrics`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray.train import UserCallback

from pipeline.training.report import HISTORY_KEY, STEPS_KEY, SYSTEM_KEY, epoch_metrics
from pipeline.training.report import is_number as _number

__all__ = ["HISTORY_KEY", "STEPS_KEY", "SYSTEM_KEY", "EpochReport", "MetricsSink", "MlflowMetrics",
           "ProgressCallback", "epoch_metrics", "merge_system"]

logger = logging.getLogger(__name__)

EPOCH_PREFIX, STEP_PREFIX = "epoch/", "train/"  # MLflow metric names: epoch/loss (step = epoch), train/loss
# Keys that Ray Tune adds to every result (not training metrics).
_TUNE_KEYS = {"training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp",
              "timesteps_total", "timesteps_since_restore", "iterations_since_restore", "episodes_total", "pid",
              "done", "date", "hostname", "node_ip", "config", "trial_id", "experiment_tag", "checkpoint_dir_name",
              "checkpoint_path", "should_checkpoint"}


def merge_system(metrics_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's metrics (a copy) carrying every rank's system-metric samples."""
    merged = dict(_rank_zero(metrics_per_rank))
    samples = [s for m in metrics_per_rank for s in m.get(SYSTEM_KEY) or []]
    if samples:
        merged[SYSTEM_KEY] = samples
    return merged


def _rank_zero(metrics_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    return next((m for m in metrics_per_rank if STEPS_KEY in m), metrics_per_rank[0])


def _system_samples(value: Any) -> list[dict[str, Any]]:
    from pipeline.tracking.system_metrics import NODE_KEY, TIME_KEY

    return [{k: v for k, v in s.items() if k in (NODE_KEY, TIME_KEY) or _number(v)}
            for s in value or [] if isinstance(s, dict) and isinstance(s.get(NODE_KEY), str)
            and _number(s.get(TIME_KEY))]


@dataclass
class EpochReport:
    """One epoch (or, in a sweep, an ``epoch == 0`` pre-training report) as the driver sees it.

    ``metrics``: the epoch's numbers (``loss``, ``lr``, ``AP50``, ``world_size``...);
    ``steps``: rank 0's progress rows, each with its global ``step``;
    ``system``: system-metric samples of the nodes (``{"node", "time", <metric>: value}``);
    ``history``: every epoch row of the run so far, this one included (first report after a
    (re)start only, else None).
    """

    epoch: int
    metrics: dict[str, float]
    steps: list[dict[str, float]] = field(default_factory=list)
    checkpoint_path: str | None = None
    system: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], checkpoint_path: str | None = None) -> EpochReport | None:
        """Parse rank 0's report (or a Tune result, whose own keys are ignored); None without ``epoch``."""
        if not _number(metrics.get("epoch")):
            return None
        numbers = {k: float(v) for k, v in metrics.items()
                   if k not in _TUNE_KEYS and k != "epoch" and _number(v)}
        steps = [{k: float(v) for k, v in row.items() if _number(v)}
                 for row in metrics.get(STEPS_KEY) or [] if isinstance(row, dict) and _number(row.get("step"))]
        history = metrics.get(HISTORY_KEY)
        if history is not None:
            history = [{k: float(v) for k, v in row.items() if _number(v)}
                       for row in history if isinstance(row, dict) and _number(row.get("epoch"))]
        return cls(int(metrics["epoch"]), numbers, steps, checkpoint_path or metrics.get("checkpoint_path"),
                   _system_samples(metrics.get(SYSTEM_KEY)), history)

    @classmethod
    def from_workers(cls, metrics_per_rank: list[dict[str, Any]], checkpoint_path: str | None = None
                     ) -> EpochReport | None:
        """The report of a Ray Train round: rank 0's metrics (the one with ``steps``), every
        rank's system-metric samples."""
        if not metrics_per_rank:
            return None
        return cls.from_metrics(merge_system(metrics_per_rank), checkpoint_path)

    def row(self) -> dict[str, float]:
        """This epoch's row as in the history: ``{"epoch": epoch, **metrics}``."""
        return {"epoch": self.epoch, **self.metrics}


class MetricsSink(Protocol):
    """Receives every epoch report of one run, in order (a repeated epoch arrives again)."""

    def on_epoch(self, report: EpochReport) -> None: ...


class MlflowMetrics:
    """Logs reports into one MLflow run: ``epoch/<k>`` at step = epoch, ``train/<k>`` at the global
    step, the nodes' samples as MLflow system metrics ``system/<node>/<k>`` at their sampling times.

    Picklable (Ray ships it to the Train controller); the client is made on first use.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        from pipeline.tracking.system_metrics import SampleSteps

        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client: Any = None
        self._system_steps = SampleSteps()

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "_client": None,
                "_system_steps": self._system_steps}

    def warm_up(self) -> None:
        """Import MLflow (~2 s), called in the background when the sink arrives in the Train controller."""
        importlib.import_module("mlflow.tracking")

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
        metrics += self._system_steps.to_metrics(self._client, self.run_id, report.system)
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per call
            self._client.log_batch(self.run_id, metrics=metrics[i:i + 1000])


def _in_train_controller() -> bool:
    """Whether this process is Ray Train's controller actor (not a worker, not the driver)."""
    try:
        import ray

        actor = ray.get_runtime_context().current_actor
        return actor._ray_actor_creation_function_descriptor.class_name == "TrainController"
    except Exception:  # not in an actor, or another Ray version: no warm-up, the sinks import on first use
        return False


def dispatch(sinks: list[MetricsSink], report: EpochReport | None) -> None:
    """Hand ``report`` to every sink; a failing sink is reported and does not stop the training."""
    if report is None:
        return
    for sink in sinks:
        try:
            sink.on_epoch(report)
        except Exception as err:  # tracking trouble must not kill a training run
            logger.warning("%s could not record epoch %s: %s: %s", type(sink).__name__, report.epoch,
                           type(err).__name__, err)


class ProgressCallback(UserCallback):
    """The driver-side end of every rank's reports (a Ray Train ``UserCallback``): parse, dispatch to sinks.

    When it arrives in the Train controller, each sink's ``warm_up()`` (if any: importing MLflow,
    DVCLive) runs in the background while the workers start, not when the first report is
    waiting. Ray also ships the callbacks to every worker (in the run config of their train
    context): there they stay inert, and no worker imports a tracking library.
    """

    def __init__(self, sinks: list[MetricsSink]):
        self.sinks = list(sinks)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if _in_train_controller():  # a process Ray started: the sinks' warnings need the console
            from pipeline.console import setup_console

            setup_console()
            threading.Thread(target=self._warm_up, daemon=True).start()

    def _warm_up(self) -> None:
        for sink in self.sinks:
            with contextlib.suppress(Exception):  # a sink that cannot warm up fails (and says so) when used
                getattr(sink, "warm_up", lambda: None)()

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        dispatch(self.sinks, EpochReport.from_workers(metrics, getattr(checkpoint, "path", None)))

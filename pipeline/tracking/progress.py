"""Training progress from the workers to the driver: what they send, and where it goes.

Workers never write to the tracking store. What they send reaches the Train controller (which Ray
places on the driver's node, so a local ``sqlite:///`` store works on any cluster) two ways:

- **live, during the epoch**, through the run's live channel (:mod:`pipeline.tracking.channel`):
  rank 0's progress rows, every ``train.log_every`` steps and at least every 30 s, and the
  system-metric samples of the nodes the workers sample (:mod:`pipeline.tracking.system_metrics`),
  every ``mlflow.system_metrics_interval_s``;
- **once per epoch**, ``ray.train.report`` of every rank (a barrier Ray Train needs anyway for the
  checkpoint): rank 0's metrics (:func:`epoch_metrics`) carry the epoch's row (epoch, loss terms,
  lr, throughput, validation AP, world size) and the epoch's progress rows again, and the sampled
  nodes' samples of the epoch ride on them too (again, when a live channel sent them); rank 0's first report
  after a (re)start carries the whole history of the run so far, so that a sink that rewrites its
  files from scratch (live DVC metrics) never shows an epoch twice after a resume or a restart.

:class:`ProgressCallback`, a Ray Train ``UserCallback`` in the Train controller, receives both: a
daemon thread takes what the channel holds every :data:`POLL_S` seconds, the epoch reports arrive
in ``after_report``, and a :class:`Relay` hands everything to each *sink*, one delivery at a time
(a lock), each global step and each sample once however many ways it arrived (its live copy, the
epoch report's copy, the repeat of an epoch after a worker failure). A sink has ``on_epoch(report)`` and may have
``on_steps(rows)`` and ``on_system(samples)``: :class:`MlflowMetrics` and the live DVC metrics of
:mod:`pipeline.tracking.live`. A Ray Tune sweep forwards the epoch reports to its driver
(:class:`pipeline.tuning.callbacks.TrialReport`), where :class:`pipeline.tracking.trials.TrialTracker`
feeds them to :class:`MlflowMetrics` (:func:`dispatch`): a trial's step curves arrive once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray.train import UserCallback

from pipeline.tracking.channel import LIVE_INTERVAL_S, ChannelClosed
from pipeline.training.report import HISTORY_KEY, STEPS_KEY, SYSTEM_KEY, epoch_metrics
from pipeline.training.report import is_number as _number

__all__ = ["HISTORY_KEY", "POLL_S", "STEPS_KEY", "SYSTEM_KEY", "EpochReport", "MetricsSink", "MlflowMetrics",
           "ProgressCallback", "Relay", "dispatch", "epoch_metrics", "merge_system"]

logger = logging.getLogger(__name__)

EPOCH_PREFIX, STEP_PREFIX = "epoch/", "train/"  # MLflow metric names: epoch/loss (step = epoch), train/loss
POLL_S = LIVE_INTERVAL_S  # how often the Train controller takes what the live channel holds (1 s)
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


def _step_rows(value: Any) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items() if _number(v)}
            for row in value or [] if isinstance(row, dict) and _number(row.get("step"))]


def _steps_after(rows: list[dict[str, float]], last_step: float) -> tuple[list[dict[str, float]], float]:
    """The rows, in the order they were made, whose step is above every step before them (``last_step``
    included): a step at or below is a copy or a repeat. Also the new highest step."""
    fresh = []
    for row in rows:
        if row["step"] > last_step:
            fresh.append(row)
            last_step = row["step"]
    return fresh, last_step


def _system_samples(value: Any) -> list[dict[str, Any]]:
    from pipeline.tracking.system_metrics import NODE_KEY, TIME_KEY

    return [{k: v for k, v in s.items() if k in (NODE_KEY, TIME_KEY) or _number(v)}
            for s in value or [] if isinstance(s, dict) and isinstance(s.get(NODE_KEY), str)
            and _number(s.get(TIME_KEY))]


def _samples_after(samples: list[dict[str, Any]], last_time: dict[str, float]) -> list[dict[str, Any]]:
    """The samples, in order, each later than every sample of its node before it (``last_time``,
    ``{node: time}``, is updated): a sample at or before is a copy of one already delivered."""
    from pipeline.tracking.system_metrics import NODE_KEY, TIME_KEY

    fresh = []
    for sample in samples:
        node, at = sample[NODE_KEY], float(sample[TIME_KEY])
        if at > last_time.get(node, -float("inf")):
            fresh.append(sample)
            last_time[node] = at
    return fresh


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
        steps = _step_rows(metrics.get(STEPS_KEY))
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
    """Receives one run's progress, in order: ``on_epoch(report)`` for every epoch report (a
    repeated epoch arrives again), and, if it has them, ``on_steps(rows)`` for progress rows and
    ``on_system(samples)`` for the nodes' system-metric samples as they arrive during the epoch.

    A report's own ``steps`` and ``system`` are recorded by ``on_epoch`` too: they are empty when
    :class:`Relay` has delivered them apart, and full where a report is handed over whole
    (:func:`dispatch`, a sweep's trials).
    """

    def on_epoch(self, report: EpochReport) -> None: ...


class MlflowMetrics:
    """Logs a run's progress into one MLflow run: ``train/<k>`` at the global step, the nodes'
    samples as MLflow system metrics ``system/<node>/<k>`` at their sampling times, ``epoch/<k>`` at
    step = epoch (a sweep's epoch-0 report under the plain names).

    MLflow keeps every value it is given, two at one step included, so rows at a step the run
    already has are skipped: the steps a resumed run repeats after its last checkpoint, when an
    earlier driver logged them live. Picklable (Ray ships it to the Train controller); the client
    is made on first use.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        from pipeline.tracking.system_metrics import SampleSteps

        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client: Any = None
        self._system_steps = SampleSteps()
        self._last_step: float | None = None  # the run's highest train/ step (read from the store once)

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "_client": None,
                "_system_steps": self._system_steps, "_last_step": None}

    def warm_up(self) -> None:
        """Import MLflow (~2 s), called in the background when the sink arrives in the Train controller."""
        importlib.import_module("mlflow.tracking")

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def on_steps(self, rows: list[dict[str, float]]) -> None:
        self._log(*self._step_metrics(rows))

    def on_system(self, samples: list[dict[str, Any]]) -> None:
        self._log(self._system_steps.to_metrics(self.client, self.run_id, samples))

    def on_epoch(self, report: EpochReport) -> None:
        from mlflow.entities import Metric

        metrics, last_step = self._step_metrics(report.steps)
        now = int(time.time() * 1000)
        metrics += [Metric(f"{EPOCH_PREFIX}{k}" if report.epoch > 0 else k, v, now, report.epoch)
                    for k, v in report.metrics.items()]
        metrics += self._system_steps.to_metrics(self.client, self.run_id, report.system)
        self._log(metrics, last_step)

    def _step_metrics(self, rows: list[dict[str, float]]) -> tuple[list[Any], float | None]:
        """``train/<k>`` metrics of the rows at steps the run does not have yet, and their last step."""
        from mlflow.entities import Metric

        if not rows:
            return [], None
        if self._last_step is None:
            history = self.client.get_metric_history(self.run_id, f"{STEP_PREFIX}loss")
            self._last_step = max((m.step for m in history), default=-1)
        rows, last_step = _steps_after(rows, self._last_step)
        now = int(time.time() * 1000)
        return [Metric(f"{STEP_PREFIX}{k}", v, now, int(row["step"])) for row in rows for k, v in row.items()
                if k != "step"], last_step

    def _log(self, metrics: list[Any], last_step: float | None = None) -> None:
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per call
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        if last_step is not None:  # recorded: not logged again
            self._last_step = last_step


def _in_train_controller() -> bool:
    """Whether this process is Ray Train's controller actor (not a worker, not the driver)."""
    try:
        import ray

        if not ray.is_initialized():  # not a Ray process; and get_runtime_context() would start (or join) a Ray
            return False
        actor = ray.get_runtime_context().current_actor
        return actor._ray_actor_creation_function_descriptor.class_name == "TrainController"
    except Exception:  # not in an actor, or another Ray version: no warm-up, the sinks import on first use
        return False


def _deliver(sink: Any, method: str, payload: Any, what: str, warn: bool = True) -> bool:
    """``sink.<method>(payload)`` if the sink has that method; a failure is logged (if ``warn``), not
    raised: tracking trouble must not kill a training run. False if it failed."""
    call = getattr(sink, method, None)
    if call is None:
        return True
    try:
        call(payload)
    except Exception as err:
        if warn:
            logger.warning("%s could not record %s: %s: %s", type(sink).__name__, what, type(err).__name__, err)
        return False
    return True


def _describe_steps(rows: list[dict[str, float]]) -> str:
    first, last = int(rows[0]["step"]), int(rows[-1]["step"])
    return f"step {first}" if first == last else f"steps {first}-{last}"


def dispatch(sinks: list[MetricsSink], report: EpochReport | None) -> None:
    """Hand ``report`` whole (rows and samples included) to every sink's ``on_epoch``; a failing sink
    is reported and does not stop the training."""
    if report is None:
        return
    for sink in sinks:
        _deliver(sink, "on_epoch", report, f"epoch {report.epoch}")


class Relay:
    """Delivers one training's progress to its sinks: what the live ``channel`` holds (taken every
    ``poll_s`` seconds in a daemon thread, :meth:`start`) and the epoch reports (:meth:`epoch`).

    Deliveries take a lock (sinks never run concurrently) and each global step goes out once:
    rows at or below the highest step delivered are dropped (the epoch report's copies of rows
    that came live, the rows of an epoch repeated after a worker failure; the values a repeated
    epoch computes again are those of the first try, epochs being idempotent). Each system-metric
    sample goes out once too: a node's samples at or before the latest of its samples delivered
    are copies (the epoch report's, of samples that came live). A sink failing live deliveries
    warns once, until it records again.
    """

    def __init__(self, sinks: list[MetricsSink], channel: Any = None, poll_s: float = POLL_S):
        self.sinks, self.channel, self.poll_s = list(sinks), channel, poll_s
        self._lock = threading.Lock()
        self._last_step = -1.0
        self._last_sample: dict[str, float] = {}  # node -> time of its latest sample delivered
        self._failing: set[tuple[int, str]] = set()  # (sink index, method) whose failure was reported

    def start(self) -> threading.Thread:
        """Warm the sinks up (imports), then drain the channel until it is closed, in a daemon thread."""
        thread = threading.Thread(target=self._run, name="progress-relay", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        for sink in self.sinks:
            with contextlib.suppress(Exception):  # a sink that cannot warm up fails (and says so) when used
                getattr(sink, "warm_up", lambda: None)()
        while self.channel is not None and self.drain():
            time.sleep(self.poll_s)

    def drain(self) -> bool:
        """Deliver what the channel holds; False once the channel is closed (training ended)."""
        try:
            items = self.channel.take()
        except ChannelClosed:
            return False
        except Exception as err:  # Ray trouble: the next poll tries again
            logger.debug("live channel: %s: %s", type(err).__name__, err)
            return True
        self.live(items)
        return True

    def live(self, items: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Deliver the live channel's ``(kind, rows or samples)`` items."""
        steps = _step_rows([r for kind, rows in items if kind == STEPS_KEY for r in rows])
        system = _system_samples([s for kind, samples in items if kind == SYSTEM_KEY for s in samples])
        with self._lock:
            self._steps_and_system(steps, system, live=True)

    def epoch(self, report: EpochReport | None) -> None:
        """Deliver an epoch report: its rows not delivered yet, its samples, then the epoch."""
        if report is None:
            return
        with self._lock:
            self._steps_and_system(report.steps, report.system, live=False)
            epoch = dataclasses.replace(report, steps=[], system=[])
            for sink in self.sinks:
                _deliver(sink, "on_epoch", epoch, f"epoch {report.epoch}")

    def _steps_and_system(self, steps: list[dict[str, float]], system: list[dict[str, Any]], live: bool) -> None:
        fresh, self._last_step = _steps_after(steps, self._last_step)
        system = _samples_after(system, self._last_sample)
        deliveries = []
        if fresh:
            deliveries.append(("on_steps", fresh, _describe_steps(fresh)))
        if system:
            deliveries.append(("on_system", system, f"{len(system)} system-metric samples"))
        for index, sink in enumerate(self.sinks):
            for method, payload, what in deliveries:
                key = (index, method)
                if _deliver(sink, method, payload, what, warn=not (live and key in self._failing)):
                    self._failing.discard(key)
                else:
                    self._failing.add(key)


# In the Train controller: one relay per live channel. Ray unpickles the callbacks there more than once
# (the run config travels in several of the controller's arguments); every copy must use one relay.
_RELAYS: dict[Any, Relay] = {}
_RELAYS_LOCK = threading.Lock()


class ProgressCallback(UserCallback):
    """The driver-side end of the workers' progress (a Ray Train ``UserCallback``): the live channel's
    rows and samples and every rank's epoch reports, parsed and relayed to the sinks (:class:`Relay`).

    When it arrives in the Train controller, a daemon thread warms the sinks up (``warm_up()``, if
    any: importing MLflow, DVCLive) while the workers start, not when the first report is waiting,
    and then drains ``channel`` (a :class:`~pipeline.tracking.channel.LiveChannel`, if given) until
    the driver closes it. Ray also ships the callbacks to every worker (in the run config of their
    train context): there they stay inert, and no worker imports a tracking library.
    """

    def __init__(self, sinks: list[MetricsSink], channel: Any = None):
        self.sinks, self.channel = list(sinks), channel
        self._relay: Relay | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_relay": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if _in_train_controller():  # a process Ray started: the sinks' warnings need the console
            from pipeline.console import setup_console

            setup_console()
            key = self.channel.key if self.channel is not None else id(self)
            with _RELAYS_LOCK:
                if key not in _RELAYS:
                    _RELAYS[key] = Relay(self.sinks, self.channel)
                    _RELAYS[key].start()
                self._relay = _RELAYS[key]

    @property
    def relay(self) -> Relay:
        if self._relay is None:  # outside the Train controller (a test): delivered on the caller's thread
            self._relay = Relay(self.sinks, self.channel)
        return self._relay

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.relay.epoch(EpochReport.from_workers(metrics, getattr(checkpoint, "path", None)))

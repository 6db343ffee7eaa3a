"""The live channel: rank 0's progress rows and the nodes' system-metric samples reach the driver's
side while an epoch runs, not only with the epoch's report.

``ray.train.report`` stays once per epoch: every rank must call it, and reports less than ~2 s apart
stall training (BENCHMARKS.md, "Ray Train report cost"). What should be seen sooner travels through
a small actor instead, a :class:`LiveChannel` that the driver opens before training (on its own
node, next to the Train controller, with no CPU reserved) and closes when training ends:

- on the workers, :class:`LiveSteps` (rank 0) puts each progress row into it as soon as
  :class:`~pipeline.training.hooks.StepLogger` makes it (every ``train.log_every`` steps, at least
  every 30 s), and :class:`~pipeline.tracking.system_metrics.NodeMetrics` puts each system-metric
  sample as it is taken (every ``mlflow.system_metrics_interval_s``). A put is an actor call whose
  result nobody waits for: no round trip, ~0.1 ms of the worker's time (BENCHMARKS.md, "Live step
  rows");
- in the Train controller, :class:`~pipeline.tracking.progress.ProgressCallback` takes what arrived
  every second, in a daemon thread, and hands it to the sinks (MLflow, DVCLive).

The epoch's report still carries the epoch's rows, so a row whose put was lost (a worker that died
right after making it) still arrives with its epoch; the driver's side delivers each global step
once. These hooks are defined here and added by the driver (``fit``'s ``train_loop_config["hooks"]``):
the workers' own code (:mod:`pipeline.training`) does not depend on tracking.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from pipeline.training.engine import HookBase
from pipeline.training.report import STEPS_KEY

__all__ = ["ChannelClosed", "LiveChannel", "LiveSteps"]

logger = logging.getLogger(__name__)

Item = tuple[str, list[dict[str, Any]]]  # (kind: STEPS_KEY or SYSTEM_KEY, rows or samples)


class ChannelClosed(RuntimeError):
    """The channel's actor is gone: the driver closed it (training ended), or its node died."""


class LiveChannelActor:
    """The actor behind a :class:`LiveChannel`: what was put since the last take, in order."""

    def __init__(self) -> None:
        self._items: list[Item] = []

    def put(self, kind: str, items: list[dict[str, Any]]) -> None:
        self._items.append((kind, items))

    def take(self) -> list[Item]:
        items, self._items = self._items, []
        return items


class LiveChannel:
    """A handle on the channel's actor; picklable, so it travels to the workers and the Train controller.

    One producer's puts arrive in the order they were made (Ray runs one caller's calls to an
    actor in order). :attr:`key` names the channel (its relay on the driver's side is one per key).
    """

    def __init__(self, actor: Any, key: str | None = None):
        self._actor, self.key = actor, key or uuid.uuid4().hex
        self._failed = False  # a put failed (reported once)

    @classmethod
    def open(cls, node_id: str | None = None) -> LiveChannel:
        """Start the actor, on node ``node_id`` if given (the driver's: it outlives any worker's node),
        reserving no CPU (a cluster's head may have none)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0}
        if node_id is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
        return cls(ray.remote(LiveChannelActor).options(**options).remote())

    def put(self, kind: str, items: list[dict[str, Any]]) -> None:
        """Send ``items`` without waiting for them to arrive (the call's result is dropped). A put
        that cannot be made is reported once and never stops training: rows still go with the
        epoch's report."""
        try:
            self._actor.put.remote(kind, items)
        except Exception as err:  # Ray shutting down, an invalid handle
            if not self._failed:
                logger.warning("live progress channel: %s: %s; progress rows now arrive with each epoch's report",
                               type(err).__name__, err)
            self._failed = True

    def take(self, timeout_s: float = 30.0) -> list[Item]:
        """Everything put since the last take, oldest first (empty if the actor did not answer in time).

        Raises:
            ChannelClosed: the actor is gone.
        """
        import ray

        try:
            return ray.get(self._actor.take.remote(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            return []
        except ray.exceptions.RayActorError as err:
            raise ChannelClosed(str(err)) from err

    def close(self) -> None:
        """Stop the actor (what it still holds is dropped); safe to call twice."""
        import ray

        with contextlib.suppress(Exception):  # already gone, or Ray already shut down
            ray.kill(self._actor, no_restart=True)


class LiveSteps(HookBase):
    """A training hook the driver adds to every worker: rank 0 puts each new progress row into
    ``channel`` at the end of the step that made it. Register it after
    :class:`~pipeline.training.hooks.StepLogger` (the driver's hooks come after the default ones)."""

    def __init__(self, channel: LiveChannel):
        self.channel = channel

    def before_epoch(self) -> None:
        self._sent = 0

    def after_step(self) -> None:
        rows = self.trainer.report.get(STEPS_KEY)
        if rows and len(rows) > self._sent:
            self.channel.put(STEPS_KEY, rows[self._sent:])
            self._sent = len(rows)

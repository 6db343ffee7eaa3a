"""The live channel: rank 0's progress rows and the nodes' system-metric samples reach the driver's
side while an epoch runs, not only with the epoch's report.

``ray.train.report`` stays once per epoch: every rank must call it, and reports less than ~2 s apart
stall training (BENCHMARKS.md, "Ray Train report cost"). What should be seen sooner travels through
a small actor instead, a :class:`LiveChannel` that the driver opens before training (on its own
node, next to the Train controller, with no CPU reserved) and closes when training ends:

- on the workers, :class:`LiveSteps` (rank 0) puts each progress row that
  :class:`~pipeline.training.hooks.StepLogger` makes (every ``train.log_every`` steps, at least
  every 30 s) at the end of its step, and :class:`~pipeline.tracking.system_metrics.NodeMetrics`
  puts each system-metric sample as it is taken (every ``mlflow.system_metrics_interval_s``). A put
  only queues (microseconds of the training thread, BENCHMARKS.md "Live progress rows"); a daemon
  thread of the worker sends what is queued in one actor call at most once every
  :data:`LIVE_INTERVAL_S` (1 s), whose result nobody waits for: no round trip per step, and no
  more than one call a second however short the steps;
- in the Train controller, :class:`~pipeline.tracking.progress.ProgressCallback` takes what arrived
  every second, in a daemon thread, and hands it to the sinks (MLflow, DVCLive).

So a row reaches the sinks ~1-2 s after its step (plus the time the sinks take). The epoch's
report still carries the epoch's rows, so a row whose put was lost (a worker that died right after
making it) still arrives with its epoch; the driver's side delivers each global step once. These
hooks are defined here and added by the driver (``fit``'s ``train_loop_config["hooks"]``): the
workers' own code (:mod:`pipeline.training`) does not depend on tracking.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
import uuid
from typing import Any

from pipeline.training.engine import HookBase
from pipeline.training.report import STEPS_KEY

__all__ = ["LIVE_INTERVAL_S", "ChannelClosed", "LiveChannel", "LiveSteps"]

logger = logging.getLogger(__name__)

Item = tuple[str, list[dict[str, Any]]]  # (kind: STEPS_KEY or SYSTEM_KEY, rows or samples)
LIVE_INTERVAL_S = 1.0  # a worker sends at most this often; the Train controller takes this often
_SENDER_START = threading.Lock()  # one sender thread per channel handle, whichever thread puts first


class ChannelClosed(RuntimeError):
    """The channel's actor is gone: the driver closed it (training ended), or its node died."""


class LiveChannelActor:
    """The actor behind a :class:`LiveChannel`: what was sent since the last take, in order."""

    def __init__(self) -> None:
        self._items: list[Item] = []

    def put(self, items: list[Item]) -> None:
        self._items += items

    def take(self) -> list[Item]:
        items, self._items = self._items, []
        return items


class LiveChannel:
    """A handle on the channel's actor; picklable, so it travels to the workers and the Train controller.

    :meth:`put` only queues; a daemon thread of the process, started by the first put, sends the
    queued items in order, together, at most once every ``interval_s`` seconds (Ray runs one
    caller's calls to an actor in order). :attr:`key` names the channel (its relay on the driver's
    side is one per key).
    """

    def __init__(self, actor: Any, key: str | None = None, interval_s: float = LIVE_INTERVAL_S):
        self._actor, self.key, self.interval_s = actor, key or uuid.uuid4().hex, interval_s
        self._outbox: queue.SimpleQueue | None = None  # for the sender thread, started by the first put
        self._failed = False  # a send failed (reported once)

    def __getstate__(self) -> dict[str, Any]:
        return {"_actor": self._actor, "key": self.key, "interval_s": self.interval_s, "_outbox": None,
                "_failed": False}

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
        """Queue ``items`` (not modified afterwards) for the sender thread; returns at once."""
        if self._outbox is None:
            with _SENDER_START:
                if self._outbox is None:
                    outbox: queue.SimpleQueue = queue.SimpleQueue()
                    threading.Thread(target=self._sender, args=(outbox,), name="live-channel", daemon=True).start()
                    self._outbox = outbox
        self._outbox.put((kind, items))

    def _sender(self, outbox: queue.SimpleQueue) -> None:
        last = -math.inf
        while True:
            items = [outbox.get()]
            time.sleep(max(0.0, last + self.interval_s - time.monotonic()))
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(outbox.get_nowait())
            last = time.monotonic()
            self.send(items)

    def send(self, items: list[Item]) -> None:
        """The actor call itself, on this thread, its result dropped. A call that cannot be made is
        reported once and never stops training: the rows still go with the epoch's report."""
        try:
            self._actor.put.remote(items)
        except Exception as err:  # Ray shutting down, an invalid handle
            if not self._failed:
                logger.warning("live progress channel: %s: %s; progress rows now arrive with each epoch's report",
                               type(err).__name__, err)
            self._failed = True

    def take(self, timeout_s: float = 30.0) -> list[Item]:
        """Everything sent since the last take, oldest first (empty if the actor did not answer in time).

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

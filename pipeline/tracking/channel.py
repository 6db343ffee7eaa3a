"""The live channel: rank 0's progress rows and the nodes' system-metric samples reach the driver's
side while an epoch runs, not only with the epoch's report.

``ray.train.report`` stays once per epoch: every rank must call it, and reports less than ~2 s apart
stall training (BENCHMARKS.md, "Ray Train report cost"). What should be seen sooner travels through
a small actor instead, a :class:`LiveChannel` that the driver opens before training (on its own
node, next to the Train controller, with no CPU reserved) and closes when training ends:

- on the workers, :class:`LiveSteps` (rank 0) puts the progress rows that
  :class:`~pipeline.training.hooks.StepLogger` makes (every ``train.log_every`` steps, at least
  every 30 s) at the end of their step, at most once a second (:data:`LIVE_INTERVAL_S`: the rows
  of faster steps go together), and :class:`~pipeline.tracking.system_metrics.NodeMetrics` puts
  each system-metric sample as it is taken (every ``mlflow.system_metrics_interval_s``). A put only
  queues the rows (microseconds of the training thread, BENCHMARKS.md "Live progress rows"); a
  daemon thread makes the actor call, whose result nobody waits for: no round trip per step;
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
LIVE_INTERVAL_S = 1.0  # rank 0 puts its rows at most this often; the Train controller takes them this often
_SENDER_START = threading.Lock()  # one sender thread per channel handle, whichever thread puts first


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

    :meth:`put` only queues (the caller's cost is an append); a daemon thread of the process makes
    the actor calls, in the order of the puts (Ray runs one caller's calls to an actor in order).
    :attr:`key` names the channel (its relay on the driver's side is one per key).
    """

    def __init__(self, actor: Any, key: str | None = None):
        self._actor, self.key = actor, key or uuid.uuid4().hex
        self._outbox: queue.SimpleQueue | None = None  # for the sender thread, started by the first put
        self._failed = False  # a send failed (reported once)

    def __getstate__(self) -> dict[str, Any]:
        return {"_actor": self._actor, "key": self.key, "_outbox": None, "_failed": False}

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
        while True:
            self.send(*outbox.get())

    def send(self, kind: str, items: list[dict[str, Any]]) -> None:
        """The actor call itself, on this thread, its result dropped (~0.1-2 ms here, BENCHMARKS.md). A
        call that cannot be made is reported once and never stops training: the rows still go with
        the epoch's report."""
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
    """A training hook the driver adds to every worker: rank 0 puts its new progress rows into
    ``channel`` at the end of a step, at most once every ``min_interval_s`` seconds (the rows of
    faster steps go together: the controller takes them that often anyway) and at the epoch's last
    step. Register it after :class:`~pipeline.training.hooks.StepLogger` (the driver's hooks come
    after the default ones)."""

    def __init__(self, channel: LiveChannel, min_interval_s: float = LIVE_INTERVAL_S):
        self.channel, self.min_interval_s = channel, min_interval_s

    def before_train(self) -> None:
        self._last_put = -math.inf

    def before_epoch(self) -> None:
        self._sent = 0

    def after_step(self) -> None:
        t = self.trainer
        rows = t.report.get(STEPS_KEY)
        if not rows or len(rows) == self._sent:
            return
        now = time.monotonic()
        if now - self._last_put < self.min_interval_s and t.step + 1 != t.steps_per_epoch:
            return
        self.channel.put(STEPS_KEY, rows[self._sent:])
        self._sent, self._last_put = len(rows), now

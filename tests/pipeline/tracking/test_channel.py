"""The live channel's worker side (pipeline/tracking/channel.py), without Ray: rank 0 puts each progress
row at the end of the step that made it; a sampled node puts each sample as it is taken."""

from __future__ import annotations

import pickle
import time

from pipeline.tracking import system_metrics
from pipeline.tracking.channel import LiveChannel, LiveSteps
from pipeline.training.engine import HookBase
from pipeline.training.report import STEPS_KEY, SYSTEM_KEY
from pipeline.training.worker import build_trainer, default_hooks


class Channel:
    """A :class:`~pipeline.tracking.channel.LiveChannel` without its actor: keeps the puts in order."""

    def __init__(self):
        self.items = []

    def put(self, kind, items):
        self.items.append((kind, [dict(i) for i in items]))  # the actor call serialises them at once


class PutsPerStep(HookBase):
    """After each step (registered after LiveSteps): how many puts the channel has had so far."""

    def __init__(self, channel):
        self.channel, self.seen = channel, []

    def after_step(self):
        self.seen.append((self.trainer.global_step, len(self.channel.items)))


def test_rank_zero_puts_each_row_at_the_end_of_its_step(tiny_params, tiny_coco):
    params = tiny_params("train.log_every=2", "train.val_every=0", "train.precise_bn_images=0")
    trainer, _ = build_trainer(params, tiny_coco)
    channel = Channel()
    counts = PutsPerStep(channel)
    trainer.register_hooks([*default_hooks(params, tiny_coco, rank=0), LiveSteps(channel), counts])
    trainer.train()
    # 4 steps, log_every=2: rows at the 1st and 3rd step and at the epoch's last, each put at once
    assert [(kind, [r["step"] for r in rows]) for kind, rows in channel.items] == [
        (STEPS_KEY, [1]), (STEPS_KEY, [3]), (STEPS_KEY, [4])]
    assert counts.seen == [(1, 1), (2, 1), (3, 2), (4, 3)]
    assert set(channel.items[0][1][0]) >= {"step", "loss", "loss_cls", "lr", "images_per_s"}
    assert [r["step"] for r in trainer.report[STEPS_KEY]] == [1, 3, 4]  # the epoch's report carries them again


class Actor:
    """Stands in for the channel's actor: records each call's items and when it came."""

    def __init__(self):
        self.calls = []
        self.put = self

    def remote(self, items):
        self.calls.append((time.monotonic(), [step for _, rows in items for step in rows]))


def test_puts_only_queue_and_a_thread_sends_them_in_order_at_most_once_an_interval():
    actor = Actor()
    channel = LiveChannel(actor, interval_s=0.3)
    start = time.monotonic()
    for step in range(1, 51):  # 50 puts in ~0.5 s
        channel.put(STEPS_KEY, [step])
        time.sleep(0.01)
    deadline = time.monotonic() + 30
    while sum(len(steps) for _, steps in actor.calls) < 50:
        assert time.monotonic() < deadline, actor.calls
        time.sleep(0.01)
    assert [s for _, steps in actor.calls for s in steps] == list(range(1, 51))
    times = [t for t, _ in actor.calls]
    assert len(times) <= 4 and all(b - a >= 0.29 for a, b in zip(times, times[1:])), times
    assert times[0] - start < 0.2  # the first put goes at once
    assert pickle.loads(pickle.dumps(channel))._outbox is None  # the thread stays with this process


def test_a_sampled_node_puts_each_sample_as_it_is_taken_and_keeps_it_for_the_report(monkeypatch):
    import functools

    monkeypatch.setattr(system_metrics, "this_node", lambda: ("10.0.0.2-feed0000", "feed0000" * 7))
    channel = Channel()
    settings = system_metrics.SystemMetricsSettings(interval_s=0.05)
    sampler = system_metrics.worker_sampler(settings, 0, publish=functools.partial(channel.put, SYSTEM_KEY))
    deadline = time.monotonic() + 30
    while len(channel.items) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    drained = sampler.drain()  # the epoch's report carries them again (the relay delivers each once)
    sampler.stop()
    assert len(channel.items) >= 2 and all(kind == SYSTEM_KEY and len(s) == 1 for kind, s in channel.items)
    assert [s for _, [s] in channel.items][:len(drained)] == drained
    assert channel.items[0][1][0][system_metrics.NODE_KEY] == "10.0.0.2-feed0000"

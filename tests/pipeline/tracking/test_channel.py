"""The live channel's worker side (pipeline/tracking/channel.py), without Ray: rank 0 puts each progress
row at the end of the step that made it; a sampled node puts each sample as it is taken."""

from __future__ import annotations

import time

import pytest

from pipeline.tracking import system_metrics
from pipeline.tracking.channel import LiveSteps
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


@pytest.mark.parametrize(("min_interval_s", "puts", "seen"), [
    (0.0, [[1], [3], [4]], [(1, 1), (2, 1), (3, 2), (4, 3)]),   # each row at the end of its step
    (3600.0, [[1], [3, 4]], [(1, 1), (2, 1), (3, 1), (4, 2)]),  # at most one put an hour, and the epoch's last step
])
def test_rank_zero_puts_its_rows_at_the_end_of_a_step(tiny_params, tiny_coco, min_interval_s, puts, seen):
    params = tiny_params("train.log_every=2", "train.val_every=0", "train.precise_bn_images=0")
    trainer, _ = build_trainer(params, tiny_coco)
    channel = Channel()
    counts = PutsPerStep(channel)
    trainer.register_hooks([*default_hooks(params, tiny_coco, rank=0), LiveSteps(channel, min_interval_s), counts])
    trainer.train()
    # 4 steps, log_every=2: rows at the 1st and 3rd step and at the epoch's last
    assert [(kind, [r["step"] for r in rows]) for kind, rows in channel.items] == [(STEPS_KEY, p) for p in puts]
    assert counts.seen == seen
    assert set(channel.items[0][1][0]) >= {"step", "loss", "loss_cls", "lr", "images_per_s"}
    assert [r["step"] for r in trainer.report[STEPS_KEY]] == [1, 3, 4]  # the epoch's report carries them again


def test_a_sampled_node_puts_each_sample_as_it_is_taken(monkeypatch):
    import functools

    monkeypatch.setattr(system_metrics, "this_node", lambda: ("10.0.0.2-feed0000", "feed0000" * 7))
    channel = Channel()
    settings = system_metrics.SystemMetricsSettings(interval_s=0.05)
    sampler = system_metrics.worker_sampler(settings, 0, publish=functools.partial(channel.put, SYSTEM_KEY))
    deadline = time.monotonic() + 30
    while len(channel.items) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sampler.drain() == []  # nothing left for the epoch's report
    sampler.stop()
    assert len(channel.items) >= 2 and all(kind == SYSTEM_KEY and len(s) == 1 for kind, s in channel.items)
    assert channel.items[0][1][0][system_metrics.NODE_KEY] == "10.0.0.2-feed0000"

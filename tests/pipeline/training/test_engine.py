"""The training engine without Ray: one step, a two-epoch run with the default hooks, resume, hooks."""

from __future__ import annotations

import math

import pytest
import torch
from worker_hooks import PoisonAt

from pipeline.training import state as train_state
from pipeline.training.engine import HookBase, Trainer
from pipeline.training.losses import NonFiniteLossError
from pipeline.training.worker import build_trainer, default_hooks

LOSS_TERMS = {"loss_rpn_obj", "loss_rpn_box", "loss_cls", "loss_box"}


class Calls(HookBase):
    """Records the hook calls it sees: (method, epoch, global step)."""

    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name in ("before_train", "after_train", "before_epoch", "after_epoch", "before_step", "after_step"):
            t = object.__getattribute__(self, "trainer")
            return lambda: self.calls.append((name, t.epoch, t.global_step))
        return object.__getattribute__(self, name)


class SaveAfterEpoch(HookBase):
    """Writes the checkpoint the Ray report would write (state + model config) after epoch ``epoch``."""

    def __init__(self, epoch: int, folder, extra_state):
        self.epoch, self.folder, self.extra_state = epoch, folder, extra_state

    def after_epoch(self):
        if self.trainer.epoch == self.epoch:
            train_state.save_state(self.folder, {**self.trainer.state_dict(), **self.extra_state})


class _Each(HookBase):
    """Calls ``fn(trainer)`` after every step."""

    def __init__(self, fn):
        self.fn = fn

    def after_step(self):
        self.fn(self.trainer)


def _params(tiny_params, *overrides):
    return tiny_params("train.epochs=2", "train.val_every=1", "train.precise_bn_images=4", *overrides)


def test_one_step_updates_the_weights_and_reports_the_losses(tiny_params, tiny_coco):
    trainer, extra = build_trainer(_params(tiny_params), tiny_coco)
    assert extra["class_names"] == ["red_box", "blue_box"] and trainer.steps_per_epoch == 4
    before = [p.detach().clone() for p in trainer.model.parameters()]
    images, targets = next(iter(trainer.loader))
    trainer.model.train()
    trainer.run_step(images, targets)
    assert set(trainer.losses) == LOSS_TERMS | {"loss"}
    assert trainer.losses["loss"] == pytest.approx(sum(trainer.losses[k] for k in LOSS_TERMS), rel=1e-5)
    assert trainer.lr == pytest.approx(trainer.base_lr * 0.001, rel=1e-6)  # warm-up's first step
    assert trainer.scheduler.last_epoch == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_two_epochs_with_the_default_hooks_and_a_resume_to_the_same_weights(tiny_params, tiny_coco, tmp_path, caplog):
    params = _params(tiny_params)
    straight, extra = build_trainer(params, tiny_coco)
    calls = Calls()
    straight.register_hooks([*default_hooks(params, tiny_coco, rank=0), SaveAfterEpoch(1, tmp_path, extra), calls])
    with caplog.at_level("INFO", logger="pipeline"):
        straight.train()
    assert [r["epoch"] for r in straight.history] == [1, 2] and straight.global_step == 8
    for row in straight.history:
        assert LOSS_TERMS | {"loss", "lr", "images_per_s", "epoch_time_s", "global_step", "AP50", "AP"} <= set(row)
        assert row["degenerate_boxes"] == 0  # the default recipe (resize, flip) removes no box
    assert [r["global_step"] for r in straight.history] == [4, 8]
    assert len(straight.report["steps"]) == 4  # log_every=1: every step of the last epoch
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 2/2 step 4/4 loss") for m in messages)
    assert any(m.startswith("precise batch norm: statistics recomputed over 4 train images") for m in messages)
    assert any(m.startswith("epoch 2/2 done in") and "AP50" in m for m in messages)
    names = [c[0] for c in calls.calls]
    assert names[0] == "before_train" and names[-1] == "after_train"
    assert names.count("before_step") == names.count("after_step") == 8 and names.count("after_epoch") == 2
    assert ("after_epoch", 1, 4) in calls.calls and ("after_epoch", 2, 8) in calls.calls

    # resume from the checkpoint written after epoch 1 (weights_only, as from a Ray checkpoint)
    resumed, _ = build_trainer(params, tiny_coco)
    resumed.load_state_dict(train_state.load_state(tmp_path))
    assert (resumed.epoch, resumed.global_step, len(resumed.optimizer.state)) == (1, 4, len(straight.optimizer.state))
    resumed.register_hooks(default_hooks(params, tiny_coco, rank=0))
    resumed.train()
    final, again = straight.model_without_ddp.state_dict(), resumed.model_without_ddp.state_dict()
    for key, value in final.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=1e-6, msg=key)
    assert len(resumed.history) == 2
    for a, b in zip(straight.history, resumed.history):
        for key in (*LOSS_TERMS, "loss", "lr", "global_step", "AP", "AP50"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (a["epoch"], key)


def test_resume_refuses_another_seed_and_continues_an_other_world_schedule(tiny_params, tiny_coco):
    trainer, _ = build_trainer(_params(tiny_params), tiny_coco)
    state = trainer.state_dict()
    other, _ = build_trainer(_params(tiny_params, "train.seed=7"), tiny_coco)
    with pytest.raises(ValueError, match="train.seed=0, this run has 7"):
        other.load_state_dict(state)
    state |= {"epoch": 1, "global_step": 2}  # as if written after epoch 1 by a world of twice the size
    trainer.load_state_dict(state)
    assert trainer.scheduler.last_epoch == 4  # the start of epoch 2 of this world's schedule (4 steps per epoch)


def test_a_non_finite_loss_names_the_step_and_after_train_still_runs(tiny_params, tiny_coco):
    trainer, _ = build_trainer(_params(tiny_params, "train.val_every=0"), tiny_coco)
    calls = Calls()
    trainer.register_hooks([PoisonAt(1), calls])
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2 \(global step 2\).*total=nan"):
        trainer.train()
    assert calls.calls[-1] == ("after_train", 0, 1) and trainer.history == []


def test_hooks_are_typed_and_know_their_trainer():
    with pytest.raises(RuntimeError, match="not registered"):
        _ = PoisonAt(0).trainer
    trainer = Trainer(torch.nn.Linear(1, 1), torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1),
                      None, [], sampler=None, epochs=0, seed=0, base_lr=0.1)
    with pytest.raises(TypeError, match="not a training hook"):
        trainer.register_hooks([object()])
    hook = PoisonAt(0)
    trainer.register_hooks([hook, None])
    assert hook.trainer is trainer and trainer.hooks == [hook]
    import pickle

    assert pickle.loads(pickle.dumps(hook)).step == 0  # travels to Ray workers without its trainer


@pytest.mark.parametrize(("max_interval_s", "logged"), [(float("inf"), [1, 5, 9, 10]), (30.0, [1, 4, 5, 8, 9, 10])])
def test_progress_rows_every_log_every_steps_and_at_least_every_max_interval(monkeypatch, max_interval_s, logged):
    """10 steps of 12 s, log_every=4: rows at steps 1, 5, 9 and the epoch's last; with a 30 s bound also
    when 30 s passed since the last row (a long log_every on slow steps still shows progress)."""
    from types import SimpleNamespace

    from pipeline.training import hooks

    clock = [0.0]
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: clock[0])
    trainer = SimpleNamespace(step=0, steps_per_epoch=10, epochs=1, epoch=0, global_step=0, world_size=1,
                              batch=([None, None], []), losses={"loss": 1.0, "loss_cls": 1.0}, lr=0.1, report={})
    logger = hooks.StepLogger(log_every=4, max_interval_s=max_interval_s)
    logger._trainer_ref = lambda: trainer
    logger.before_train()
    logger.before_epoch()
    for step in range(10):
        trainer.step, trainer.global_step = step, step + 1
        logger.before_step()
        clock[0] += 12.0
        logger.after_step()
    assert [r["step"] for r in trainer.report["steps"]] == logged


def test_the_full_recipe_trains_and_its_removed_boxes_are_counted(tiny_params, tiny_coco):
    """Every v2 augmentation on: the step runs on what the recipe yields (boxes dropped by crops included)."""
    from pipeline.training.hooks import EpochMetrics

    params = _params(tiny_params, "train.epochs=1", "train.val_every=0", "train.augment.scale_jitter=[0.5, 1.5]",
                     "train.augment.iou_crop_prob=1.0", "train.augment.zoom_out_prob=0.5",
                     "train.augment.photometric_prob=0.5", "train.augment.vflip_prob=0.5")
    trainer, _ = build_trainer(params, tiny_coco)
    seen = []
    trainer.register_hooks([EpochMetrics(), _Each(lambda t: seen.extend(x.get("degenerate_boxes", 0) for x in t.batch[1]))])
    trainer.train()
    (row,) = trainer.history
    assert row["degenerate_boxes"] == sum(seen) and all(isinstance(n, int) and n >= 0 for n in seen)
    assert math.isfinite(row["loss"])

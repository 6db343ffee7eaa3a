"""Optimiser, warm-up + decay schedule and the lr scaling rule (pipeline/training/optim.py)."""

import math

import pytest
import torch

from pipeline.params import TrainParams
from pipeline.training.optim import build_optimizer, build_scheduler, lr_factor, scaled_lr


def test_linear_scaling_rule():
    train = TrainParams(lr=0.02, batch_size=4, reference_batch_size=16)
    assert scaled_lr(train, world_size=1) == pytest.approx(0.005)   # 4 images per step
    assert scaled_lr(train, world_size=4) == pytest.approx(0.02)    # 16: the reference batch
    assert scaled_lr(train, world_size=8) == pytest.approx(0.04)
    assert scaled_lr(TrainParams(lr=0.02, lr_scaling="none"), world_size=8) == 0.02


def test_multistep_with_warmup_hand_computed():
    train = TrainParams(epochs=4, lr_schedule="multistep", lr_steps=[2, 3], lr_gamma=0.1,
                        warmup_iters=4, warmup_factor=0.2)
    spe = 10  # steps per epoch
    # warm-up: factor * (1 - a) + a with a = step / warmup_iters
    assert [lr_factor(s, train, spe) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lr_factor(19, train, spe) == 1.0
    assert lr_factor(20, train, spe) == pytest.approx(0.1)   # after epoch 2
    assert lr_factor(29, train, spe) == pytest.approx(0.1)
    assert lr_factor(30, train, spe) == pytest.approx(0.01)  # after epoch 3


def test_cosine_decays_to_zero_after_warmup():
    train = TrainParams(epochs=2, lr_schedule="cosine", warmup_iters=0)
    spe = 50
    assert lr_factor(0, train, spe) == 1.0
    assert lr_factor(50, train, spe) == pytest.approx(0.5)
    assert lr_factor(100, train, spe) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(s, train, spe) for s in range(100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_scheduler_drives_the_optimiser_and_restores_from_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    train = TrainParams(epochs=2, warmup_iters=2, warmup_factor=0.5, lr_steps=[1], lr_gamma=0.1,
                        weight_decay=1e-4, momentum=0.9)
    opt = build_optimizer(model, train, lr=0.1)
    # weight decay on weights only, not on biases or norm parameters
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    sched = build_scheduler(opt, train, steps_per_epoch=3)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.075, 0.1, 0.01])
    opt2 = build_optimizer(model, train, lr=0.1)
    sched2 = build_scheduler(opt2, train, steps_per_epoch=3)
    opt2.load_state_dict(opt.state_dict())  # the loop restores both, as a checkpoint holds both
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)  # step 5: still after the first milestone
    assert isinstance(build_optimizer(model, TrainParams(optimizer="adamw"), lr=1e-3), torch.optim.AdamW)
    assert math.isclose(opt.param_groups[0]["momentum"], 0.9)


@pytest.mark.parametrize("lr_scaling", ["linear", "none"])
def test_resume_schedule_after_world_size_change(lr_scaling):
    """A run restarted with another world size continues exactly as a run of that world size would."""
    from pipeline.training.optim import resume_schedule

    train = TrainParams(epochs=3, lr=0.02, batch_size=2, reference_batch_size=8, lr_scaling=lr_scaling,
                        lr_schedule="cosine", warmup_iters=3, optimizer="adamw", weight_decay=0.01)
    images = 16

    def setup(world):
        model = torch.nn.Linear(2, 1)
        opt = build_optimizer(model, train, scaled_lr(train, world))
        return model, opt, build_scheduler(opt, train, images // (train.batch_size * world))

    def run(opt, sched, steps):
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    # epoch 1 with 2 workers (4 steps), saved ...
    _, opt2, sched2 = setup(world=2)
    run(opt2, sched2, 4)
    saved_opt, saved_sched = opt2.state_dict(), sched2.state_dict()
    # ... resumed with 1 worker (8 steps per epoch): epochs 2 and 3 follow the 1-worker schedule
    _, opt1, sched1 = setup(world=1)
    opt1.load_state_dict(saved_opt)
    sched1.load_state_dict(saved_sched)
    resume_schedule(opt1, sched1, scaled_lr(train, 1), position=1 * 8)
    resumed = run(opt1, sched1, 16)
    _, ref_opt, ref_sched = setup(world=1)
    reference = run(ref_opt, ref_sched, 24)[8:]
    assert resumed == pytest.approx(reference)
    assert all(g["initial_lr"] == scaled_lr(train, 1) for g in opt1.param_groups)
    if lr_scaling == "linear":
        assert scaled_lr(train, 1) == pytest.approx(scaled_lr(train, 2) / 2)  # half the global batch

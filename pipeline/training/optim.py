"""Optimiser, learning-rate schedule and the learning-rate scaling rule.

The schedule is per step (iteration): a linear warm-up over ``warmup_iters`` steps from
``warmup_factor x lr`` to ``lr``, then either a multi-step decay (``lr x gamma**k`` after the
k-th epoch in ``lr_steps``) or a cosine decay to 0 at the last step. The warm-up factor
multiplies the decayed value, as in detectron2's ``WarmupParamScheduler``.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from pipeline.params import TrainParams

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "resume_schedule", "scaled_lr"]


def scaled_lr(train: TrainParams, world_size: int) -> float:
    """The base learning rate for a total batch of ``train.batch_size x world_size`` images.

    ``lr_scaling: linear`` applies the linear scaling rule (Goyal et al., 2017):
    ``lr x total_batch / reference_batch_size``, so ``train.lr`` is the rate at the
    reference batch and adding workers keeps the per-image step size. ``none`` uses
    ``train.lr`` as given.
    """
    if train.lr_scaling == "none":
        return train.lr
    total_batch = train.batch_size * world_size
    return train.lr * total_batch / train.reference_batch_size


def lr_factor(step: int, train: TrainParams, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    total_steps = max(1, train.epochs * steps_per_epoch)
    if train.lr_schedule == "multistep":
        milestones = [m * steps_per_epoch for m in train.lr_steps]
        decay = train.lr_gamma ** bisect.bisect_right(milestones, step)
    else:  # cosine over the whole run, reaching 0 at total_steps
        progress = min(step, total_steps) / total_steps
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    if step < train.warmup_iters:
        alpha = step / train.warmup_iters
        decay *= train.warmup_factor * (1.0 - alpha) + alpha
    return decay


def build_optimizer(model: nn.Module, train: TrainParams, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (default) or AdamW; no weight decay on norm layers and biases."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=train.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainParams,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step :class:`LambdaLR` of :func:`lr_factor`; call ``.step()`` after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train, steps_per_epoch))


def resume_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                    base_lr: float, position: int) -> None:
    """Continue a restored optimiser/schedule at ``base_lr``, at step ``position`` of this run's schedule.

    The restored state holds the base learning rate and step count of the world size it was
    saved with. After an elastic restart the world size (so the global batch, the scaled base
    rate and the steps per epoch) may differ: the schedule then continues at the same point of
    the run (``position`` = completed epochs x this world's steps per epoch) with this world's
    base rate, exactly where a run with this world size from the start would be.
    """
    scheduler.base_lrs = [base_lr for _ in optimizer.param_groups]
    scheduler.last_epoch = position
    for group, lr_lambda in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * lr_lambda(position)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

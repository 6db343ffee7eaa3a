"""The training engine of one DDP rank: the step, the epoch loop, hooks and the resumable state.

Shaped like detectron2's ``TrainerBase``/``SimpleTrainer`` (``engine/train_loop.py``), with epochs
as the outer unit because a DDP epoch is what the data plan, the checkpoints and the reports
are made of:

- :meth:`Trainer.run_step` is one optimisation step and nothing else: forward under autocast,
  the loss terms averaged over the ranks (one small all-reduce, which is also the finite check
  every rank agrees on), backward through the AMP scaler, gradient clipping, optimiser and
  scheduler step;
- :meth:`Trainer.train` is the loop; everything else (logging, epoch metrics, precise batch
  norm, validation, reports and checkpoints, system metrics, test instrumentation) is a
  :class:`HookBase` registered with :meth:`Trainer.register_hooks`, called in registration
  order at ``before_train``/``after_train`` (in ``finally``), ``before_epoch``/``after_epoch``
  and ``before_step``/``after_step``;
- :meth:`Trainer.state_dict`/:meth:`Trainer.load_state_dict` hold everything a resumed run
  needs, so resuming is one call.

Epochs are idempotent: at every epoch start the RNGs (torch, NumPy, Python) are seeded from
``(seed, epoch, rank)`` and the sampler is set to the epoch, so an epoch repeated after a
restart draws the same batches and augmentations as the first try; a repeated epoch replaces
its row in :attr:`Trainer.history`.

Nothing here imports Ray: the engine runs in any process (a test, a notebook); the Ray Train
worker (:mod:`pipeline.training.worker`) builds it and adds the hooks that talk to Ray.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.training import state as train_state
from pipeline.training.losses import check_finite, training_targets
from pipeline.training.optim import resume_schedule

__all__ = ["HookBase", "Trainer"]


class HookBase:
    """Something done around the training loop. Override any of the six methods.

    ``self.trainer`` is the :class:`Trainer` the hook is registered on (a weak reference, so a
    hook does not keep its trainer alive). Inside an epoch ``trainer.epoch`` is the running
    epoch's 0-based index; in ``after_epoch`` it is the number of completed epochs (the
    epoch's number in :attr:`Trainer.history`).
    """

    _trainer_ref: weakref.ReferenceType | None = None

    @property
    def trainer(self) -> Trainer:
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not registered on a trainer")
        return trainer

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_epoch(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def __getstate__(self) -> dict[str, Any]:  # hooks travel to Ray workers; the trainer does not
        return {k: v for k, v in self.__dict__.items() if k != "_trainer_ref"}


class Trainer:
    """Trains ``model`` on ``loader`` for ``epochs`` epochs on one rank.

    Args:
        model: the detector, possibly wrapped in ``DistributedDataParallel``; in train mode it
            maps ``(images, targets)`` to a dict of scalar loss terms.
        optimizer, scheduler: built for the unwrapped model; the scheduler steps once per step.
        loader: yields ``(images, targets)`` batches: ``images`` a list of ``(3, H, W)`` tensors,
            ``targets`` a list of dicts with ``boxes (G, 4)``, ``labels (G,)`` (and optionally
            ``iscrowd``, ``image_id``), left on the host.
        sampler: the loader's batch sampler; ``set_epoch(epoch)`` is called at each epoch start.
        dataset: the training split behind ``loader``, for hooks that read it too (precise BN
            views it with other transforms instead of loading it again); None: not given.
        epochs: the run's total number of epochs (a resumed run continues up to it).
        seed: the run's seed (``train.seed``): the sampler's and the loader's augmentation seed
            and the base of the per-epoch RNG seeds.
        base_lr: the learning rate this world size trains at (the schedule's base).
        rank, world_size: this process's DDP rank and the number of ranks (1: no collectives).
        device: where the images go; the model is already there.
        grad_clip_norm: clip the gradients' global norm to this (None: no clipping).
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` to train under autocast (None: fp32);
            float16 uses a gradient scaler.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, loader: Iterable, *, sampler: Any, dataset: Any = None,
                 epochs: int, seed: int, base_lr: float, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", grad_clip_norm: float | None = None,
                 amp_dtype: torch.dtype | None = None):
        self.model = model
        self.model_without_ddp: nn.Module = model.module if hasattr(model, "module") else model
        self.optimizer, self.scheduler, self.loader, self.sampler = optimizer, scheduler, loader, sampler
        self.dataset = dataset
        self.epochs, self.seed, self.base_lr = epochs, seed, base_lr
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.grad_clip_norm, self.amp_dtype = grad_clip_norm, amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.steps_per_epoch = len(loader)
        self.epoch = 0          # completed epochs (inside an epoch: its 0-based index)
        self.step = 0           # the step's index inside its epoch
        self.global_step = 0    # optimiser steps done in the whole run
        self.history: list[dict[str, Any]] = []  # one row per completed epoch, the current one last
        self.row: dict[str, Any] = {}            # the current epoch's row (hooks add to it in after_epoch)
        self.batch: tuple[list[Tensor], list[dict[str, Tensor]]] | None = None  # the step's input
        self.losses: dict[str, float] = {}       # the last step's loss terms and "loss", mean over ranks
        self.lr = 0.0                            # the learning rate of the last step
        self.report: dict[str, Any] = {}         # this epoch's report to the driver, filled by hooks as it goes
        self.bad_images: dict[str, str] = {}     # file -> error of the training images that could not be decoded
        self.hooks: list[HookBase] = []

    # ------------------------------------------------------------------ hooks
    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        """Append ``hooks`` (None entries are skipped); they are called in registration order."""
        for hook in hooks:
            if hook is None:
                continue
            if not isinstance(hook, HookBase):
                raise TypeError(f"{hook!r} is not a training hook (pipeline.training.engine.HookBase)")
            hook._trainer_ref = weakref.ref(self)
            self.hooks.append(hook)

    def _call(self, method: str) -> None:
        for hook in self.hooks:
            getattr(hook, method)()

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        """Train from :attr:`epoch` (0, or where :meth:`load_state_dict` left it) to :attr:`epochs`."""
        self._call("before_train")
        try:
            while self.epoch < self.epochs:
                self._begin_epoch()
                self._call("before_epoch")
                for step, batch in enumerate(self.loader):
                    self.step, self.batch = step, batch
                    self._call("before_step")
                    self.run_step(*self.batch)
                    self.global_step += 1
                    self._call("after_step")
                self._end_epoch()
                self._call("after_epoch")
        finally:
            self._call("after_train")

    def _begin_epoch(self) -> None:
        train_state.seed_everything(self.seed, self.epoch, self.rank)
        self.sampler.set_epoch(self.epoch)
        self.model.train()
        self.report = {}

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.row = {"epoch": self.epoch}
        # a repeated epoch (after a restart) replaces its row
        self.history = [r for r in self.history if r["epoch"] != self.epoch] + [self.row]

    def run_step(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
        """One optimisation step on this rank's batch; sets :attr:`losses` and :attr:`lr`.

        Raises:
            NonFiniteLossError: a loss term or the total is NaN/inf on any rank (every rank sees
                the same averaged values, so all ranks stop together).
        """
        images = [img.to(self.device, non_blocking=True) for img in images]
        autocast = (torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        with autocast:
            loss_dict = self.model(images, training_targets(targets))
        names = sorted(loss_dict)
        total = sum(loss_dict[k] for k in names)
        # (T + 1,): every term and the total, averaged over the ranks in one all-reduce
        values = torch.stack([loss_dict[k].detach().float() for k in names] + [total.detach().float()])
        if self.world_size > 1:
            torch.distributed.all_reduce(values)
            values /= self.world_size
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        # the step's one read of the losses on the host, after the backward pass is queued; a non-finite
        # loss stops the run before the optimiser step
        reduced = dict(zip([*names, "loss"], values.tolist()))
        check_finite({k: reduced[k] for k in names}, epoch=self.epoch, step=self.step,
                     global_step=self.global_step, total=reduced["loss"])
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model_without_ddp.parameters(), self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.losses = reduced

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimiser, schedule, scaler, progress, RNGs, data order.

        Plain data only (tensors, numbers, strings, lists, dicts): it loads with
        ``torch.load(weights_only=True)`` (:mod:`pipeline.training.state`).
        """
        return {
            "model": self.model_without_ddp.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "global_step": self.global_step, "history": [dict(r) for r in self.history],
            "rng": train_state.rng_state(), "sampler_epoch": self.epoch, "loader_seed": self.seed,
            "world_size": self.world_size, "bad_images": dict(self.bad_images),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`, possibly of another world size).

        With another world size (an elastic restart) the steps per epoch and the scaled learning
        rate differ: the schedule continues at the start of the resumed epoch of this world's
        schedule, at this world's base rate (:func:`pipeline.training.optim.resume_schedule`).

        Raises:
            ValueError: the state was trained with another seed (its data order and
                augmentations would not continue).
        """
        seed = state.get("loader_seed", self.seed)
        if seed != self.seed:
            raise ValueError(f"the checkpoint was trained with train.seed={seed}, this run has {self.seed}; "
                             f"resuming would change the data order mid-run: start a new run")
        self.model_without_ddp.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.history = [dict(r) for r in state["history"]]
        self.bad_images = dict(state.get("bad_images") or {})
        resume_schedule(self.optimizer, self.scheduler, self.base_lr, self.epoch * self.steps_per_epoch)
        if "rng" in state:
            train_state.set_rng_state(state["rng"])
        self.sampler.set_epoch(int(state.get("sampler_epoch", self.epoch)))

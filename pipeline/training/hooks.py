"""The hooks a training run registers on its :class:`~pipeline.training.engine.Trainer`.

Like detectron2's ``engine/hooks.py``: each hook does one thing around the loop, in the order
:func:`pipeline.training.worker.default_hooks` registers them, so that in ``after_epoch``

1. :class:`EpochMetrics` writes the epoch's row (mean loss terms, lr, throughput, time);
   :class:`BadImages` adds the count of training images that could not be decoded;
2. :class:`PreciseBN` recomputes the batch-norm statistics after the last epoch (rank 0);
3. :class:`Validation` adds the val split's COCO AP (every rank infers its shard; rank 0 scores);
4. :class:`StepLogger` prints the epoch's summary (its progress rows are in the report already);
5. other hooks add to the report (e.g. :class:`pipeline.tracking.system_metrics.NodeMetrics`);
6. :class:`RayReport` reports the epoch to Ray Train, with the checkpoint from rank 0.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from typing import Any

from pipeline.training.engine import HookBase
from pipeline.training.report import STEPS_KEY, SYSTEM_KEY, epoch_metrics, is_number

__all__ = ["MAX_ROW_INTERVAL_S", "BadImages", "EpochMetrics", "PreciseBN", "RayReport", "StepLogger", "Validation"]

logger = logging.getLogger(__name__)

MAX_ROW_INTERVAL_S = 30.0  # a progress row at least this often, however many steps ``log_every`` spans


class EpochMetrics(HookBase):
    """The epoch's row: each loss term's mean over the steps, lr, images/s, epoch time, global step, world size,
    and ``degenerate_boxes``: boxes the training recipe removed (crops, zoom-out, downscaling under 1 px) from
    this worker's images in the epoch (``target["degenerate_boxes"]``, :mod:`pipeline.data.transforms`)."""

    def before_epoch(self) -> None:
        self._sums: dict[str, float] = {}
        self._images = 0
        self._degenerate = 0
        self._start = time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        for k, v in t.losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._images += len(t.batch[0]) * t.world_size
        self._degenerate += sum(int(target.get("degenerate_boxes", 0)) for target in t.batch[1])

    def after_epoch(self) -> None:
        t = self.trainer
        elapsed = time.perf_counter() - self._start
        t.row |= {k: v / t.steps_per_epoch for k, v in self._sums.items()}
        t.row |= {"lr": t.optimizer.param_groups[0]["lr"], "images_per_s": self._images / max(elapsed, 1e-9),
                  "epoch_time_s": elapsed, "global_step": t.global_step, "world_size": t.world_size,
                  "degenerate_boxes": self._degenerate}


class BadImages(HookBase):
    """Training images that could not be decoded (``data.bad_images: skip``): the dataset replaced each by
    the next image that decodes and named it in its target (:data:`pipeline.data.dataset.BAD_IMAGES_KEY`),
    which carries it out of the loader workers whatever process decoded it.

    Each file is logged once, by the rank that first meets it; at the end of the epoch the ranks'
    files are gathered: the row's ``bad_images`` is how many files were replaced in the epoch, and
    :attr:`Trainer.bad_images` (in the checkpoint, for ``reports/bad_images.json``) every file so far.
    More than ``max_fraction`` of the split's images (the loader's dataset) stops the run with
    :class:`~pipeline.data.errors.TooManyBadImagesError` listing them: on every rank at the end of
    the epoch (together, no rank left in a collective), and at once when there is one rank.
    """

    def __init__(self, max_fraction: float, split: str = "train"):
        self.max_fraction, self.split = max_fraction, split

    def before_train(self) -> None:
        self.split_size = len(getattr(self.trainer.loader, "dataset", None) or [])

    def before_epoch(self) -> None:
        self._epoch: dict[str, str] = {}

    def after_step(self) -> None:
        from pipeline.data.dataset import BAD_IMAGES_KEY

        t = self.trainer
        for target in t.batch[1]:
            for bad in target.get(BAD_IMAGES_KEY, ()):
                self._epoch.setdefault(bad["file"], bad["error"])
                if bad["file"] not in t.bad_images:
                    t.bad_images[bad["file"]] = bad["error"]
                    logger.warning(f"cannot decode {bad['file']} ({bad['error']}): trained on the next image "
                                   f"instead (data.bad_images: skip; listed in reports/bad_images.json)")
        if t.world_size == 1:
            self._check(t.bad_images)

    def after_epoch(self) -> None:
        t = self.trainer
        epoch = dict(self._epoch)
        if t.world_size > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * t.world_size
            dist.all_gather_object(gathered, epoch)
            for part in gathered:
                epoch |= part
        t.bad_images |= epoch
        t.row["bad_images"] = len(epoch)
        self._check(t.bad_images)

    def _check(self, bad: dict[str, str]) -> None:
        from pipeline.data.decode import check_bad_fraction

        check_bad_fraction(bad, self.split_size, self.max_fraction, f"{self.split} images")


class StepLogger(HookBase):
    """Prints progress every ``log_every`` steps (and at least every ``max_interval_s`` seconds, and at
    the epoch's last step) and a line per epoch; each printed line is also a progress row.

    The rows (``step`` = global step, loss terms, ``loss``, ``lr``, ``images_per_s``) go into the
    epoch's report (:data:`pipeline.training.report.STEPS_KEY`) as they are made: a later hook may
    send them on during the epoch (:class:`pipeline.tracking.channel.LiveSteps`), and the epoch's
    report carries them all, so the driver's side logs step curves either way.
    """

    def __init__(self, log_every: int, max_interval_s: float = MAX_ROW_INTERVAL_S):
        self.log_every, self.max_interval_s = max(1, int(log_every)), float(max_interval_s)

    def before_train(self) -> None:
        self._run_start, self._steps_this_run = time.perf_counter(), 0
        self._last_row = self._run_start

    def before_epoch(self) -> None:
        self._rows: list[dict[str, float]] = self.trainer.report.setdefault(STEPS_KEY, [])

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        t, now = self.trainer, time.perf_counter()
        self._steps_this_run += 1
        if (t.step % self.log_every and t.step + 1 != t.steps_per_epoch
                and now - self._last_row < self.max_interval_s):
            return
        self._last_row = now
        ips = len(t.batch[0]) * t.world_size / max(now - self._step_start, 1e-9)
        elapsed = now - self._run_start
        remaining = (t.epochs * t.steps_per_epoch - t.global_step) * elapsed / self._steps_this_run
        terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in t.losses.items() if k.startswith("loss_"))
        logger.info(f"epoch {t.epoch + 1}/{t.epochs} step {t.step + 1}/{t.steps_per_epoch} "
                    f"loss {t.losses['loss']:.3f} ({terms}) lr {t.lr:.2e} {ips:.1f} img/s ETA {_hms(remaining)}")
        self._rows.append({"step": t.global_step, **t.losses, "lr": t.lr, "images_per_s": ips})

    def after_epoch(self) -> None:
        t, row = self.trainer, self.trainer.row
        logger.info("epoch {}/{} done in {:.1f}s: loss {:.3f}, {:.1f} img/s{}".format(
            t.epoch, t.epochs, row["epoch_time_s"], row["loss"], row["images_per_s"],
            "".join(f", {k} {row[k]:.3f}" for k in ("AP50", "AP", "val_loss") if k in row)))


class PreciseBN(HookBase):
    """After the last epoch, recompute the batch-norm statistics over ``num_images`` training images
    (:func:`pipeline.training.precise_bn.recompute_bn_stats`). ``make_dataset(trainer)`` returns the
    train split with the evaluation transforms (a view of ``trainer.dataset``, not a second copy of
    the split). Register on rank 0 only: its weights are the checkpoint."""

    def __init__(self, make_dataset: Callable[[Any], Any], num_images: int, batch_size: int = 8):
        self.make_dataset, self.num_images, self.batch_size = make_dataset, num_images, batch_size

    def after_epoch(self) -> None:
        from pipeline.training.precise_bn import recompute_bn_stats

        t = self.trainer
        if t.epoch != t.epochs or self.num_images <= 0:
            return
        start = time.perf_counter()
        used = recompute_bn_stats(t.model_without_ddp, self.make_dataset(t), num_images=self.num_images,
                                  batch_size=self.batch_size)
        logger.info(f"precise batch norm: statistics recomputed over {used} train images "
                    f"in {time.perf_counter() - start:.1f}s")


class Validation(HookBase):
    """COCO AP of the val split every ``every`` epochs and after the last one, added to rank 0's epoch row.

    Register it on every rank: each infers its shard of the split with the unwrapped model and rank 0
    gathers the detections and scores them (:func:`pipeline.evaluation.evaluate_model`), so no rank
    waits idle and no image is counted twice. Rank 0's buffers (batch-norm statistics that
    :class:`PreciseBN` recomputed on rank 0) are broadcast first, so every rank runs rank 0's model.
    The model's own ``roi.score_threshold`` filters the detections; no second threshold is applied.
    """

    def __init__(self, dataset: Any, every: int, batch_size: int):
        self.dataset, self.every, self.batch_size = dataset, every, batch_size

    def after_epoch(self) -> None:
        import torch.distributed as dist

        from pipeline.evaluation import evaluate_model

        t = self.trainer
        if not self.every or (t.epoch % self.every and t.epoch != t.epochs):
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in t.model_without_ddp.buffers():
                dist.broadcast(buffer, src=0)
        metrics = evaluate_model(t.model_without_ddp, self.dataset, batch_size=self.batch_size, device=t.device,
                                 score_threshold=0.0)
        t.model.train()
        t.row |= {k: float(v) for k, v in metrics.items() if k.startswith("AP") and is_number(v)}


class RayReport(HookBase):
    """Reports every epoch to Ray Train: every rank its metrics, rank 0 with the checkpoint.

    The checkpoint is :meth:`Trainer.state_dict` plus ``extra_state`` (the model config and class
    names, so the driver can rebuild the model). Rank 0's first report after a (re)start carries
    the history, so a sink that rewrites its files from the history shows no epoch twice.
    """

    def __init__(self, extra_state: dict[str, Any]):
        self.extra_state = dict(extra_state)

    def before_train(self) -> None:
        self._first = True

    def after_epoch(self) -> None:
        import ray.train

        from pipeline.training import state as train_state

        t = self.trainer
        metrics = epoch_metrics(t.row, t.report.get(STEPS_KEY), system=t.report.get(SYSTEM_KEY),
                                history=t.history if t.rank == 0 and self._first else None)
        self._first = False
        if t.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            train_state.save_state(tmp, {**t.state_dict(), **self.extra_state})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


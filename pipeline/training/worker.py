"""The per-worker training function that Ray Train runs on every DDP rank (layer 1 of 3).

:func:`train_loop_per_worker` only builds the parts and registers hooks: the engine
(:class:`~pipeline.training.engine.Trainer`) is :func:`build_trainer`, the hooks every run has
are :func:`default_hooks`, the driver adds its own (system metrics, or a test's instrumentation)
through ``config["hooks"]``, and :class:`~pipeline.training.hooks.RayReport` reports every epoch
with rank 0's checkpoint. It receives everything through ``config`` (built by the driver,
:mod:`pipeline.driver.runner`) and never reads ``params.yaml`` or the environment itself.

Each rank reads its own share of the training images (:mod:`pipeline.training.loader`: every
image once per epoch across the ranks, batches of one aspect-ratio group, the same number of
steps on every rank). Workers never touch the tracking store: the driver's side logs what
they report (:mod:`pipeline.tracking.progress`).

Elastic runs: the world size may differ after a restart (``ray.num_workers: [min, max]``). The
checkpoint records the world size it was written with; the resumed epoch reshards the data for
the new world, the learning rate is rescaled for the new global batch, and the schedule
continues from the same point of the run (the start of the resumed epoch).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.data.errors import TooManyBadImagesError
from pipeline.params import Params
from pipeline.training.engine import HookBase, Trainer
from pipeline.training.hooks import BadImages, EpochMetrics, PreciseBN, RayReport, StepLogger, Validation
from pipeline.training.losses import NonFiniteLossError
from pipeline.training.optim import build_optimizer, build_scheduler, scaled_lr

__all__ = ["build_trainer", "default_hooks", "train_loop_per_worker"]

logger = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train on this rank; returns (on every rank) the status and the per-epoch history.

    ``config`` keys: ``params`` (:class:`Params`), ``data_dir`` (absolute), ``hooks`` (more
    :class:`HookBase` objects from the driver, registered after :func:`default_hooks`).
    """
    import ray.train
    import ray.train.torch

    _quiet_ray_train_logs()
    params, data_dir = config["params"], Path(config["data_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _require_data(data_dir)
    torch.set_num_threads(max(1, int(params.ray.cpus_per_worker)))
    trainer, extra_state = build_trainer(
        params, data_dir, rank=rank, world=world, device=ray.train.torch.get_device(),
        local_world_size=ctx.get_local_world_size(), prepare_model=ray.train.torch.prepare_model)
    trainer.register_hooks([*default_hooks(params, data_dir, rank), *(config.get("hooks") or ()),
                            RayReport(extra_state)])
    _resume_from_ray_checkpoint(trainer)
    try:
        trainer.train()
    except NonFiniteLossError as err:
        # returning (not raising) keeps Ray's FailureConfig from retrying a deterministic failure
        return {"status": "nonfinite", "error": str(err), "history": trainer.history, "world_size": world}
    except TooManyBadImagesError as err:  # raised on every rank together (hooks.BadImages)
        return {"status": "bad_images", "error": str(err), "bad_images": dict(trainer.bad_images),
                "history": trainer.history, "world_size": world}
    return {"status": "ok", "history": trainer.history, "world_size": world,
            "steps_per_epoch": trainer.steps_per_epoch, "base_lr": trainer.base_lr}


def build_trainer(params: Params, data_dir: str | Path, *, rank: int = 0, world: int = 1,
                  device: torch.device | str = "cpu", local_world_size: int = 1,
                  prepare_model: Callable[[nn.Module], nn.Module] | None = None) -> tuple[Trainer, dict[str, Any]]:
    """The engine of ``rank`` of ``world`` for ``params`` on ``data_dir/train.json``, with no hooks.

    ``prepare_model`` moves the model to its device and wraps it for DDP (Ray Train's
    ``prepare_model``); default: ``model.to(device)``. Returns the trainer and what the
    checkpoint holds besides its state (``model_config``, ``class_names``).
    """
    from detector import build_model
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.training.loader import build_train_loader

    train, resize, device = params.train, params.data.resize, torch.device(device)
    train_ds = CocoDetectionDataset(Path(data_dir) / "train.json", transforms=build_transforms(
        True, resize.min_size, resize.max_size, train.augment.recipe()),
        exif_orientation=params.data.exif_orientation,
        on_bad_image="replace" if params.data.bad_images == "skip" else "fail")
    if len(train_ds) < world:
        raise ValueError(f"{Path(data_dir) / 'train.json'}: {len(train_ds)} images are fewer than "
                         f"{world} workers; nothing to train on")
    loader = build_train_loader(train_ds, train, rank=rank, world=world, device=device,
                                local_world_size=local_world_size)
    if rank == 0:
        logger.info(f"data: {len(train_ds)} train images; {loader.describe()}")
    model_config = params.detector_config(train_ds.num_classes, list(train_ds.class_names))
    torch.manual_seed(train.seed)  # identical initial weights on every rank
    model = build_model(model_config)
    if train.compile:  # in place: the state dict keeps its keys
        model.backbone.compile()
    model = prepare_model(model) if prepare_model is not None else model.to(device)
    model_without_ddp = model.module if hasattr(model, "module") else model
    base_lr = scaled_lr(train, world)
    optimizer = build_optimizer(model_without_ddp, train, base_lr)
    amp_dtype = None
    if device.type == "cuda" and train.amp != "off":
        amp_dtype = torch.bfloat16 if train.amp == "bf16" else torch.float16
    trainer = Trainer(model, optimizer, build_scheduler(optimizer, train, len(loader.loader)), loader.loader,
                      sampler=loader.sampler, dataset=train_ds, epochs=train.epochs, seed=train.seed, base_lr=base_lr, rank=rank,
                      world_size=world, device=device, grad_clip_norm=train.grad_clip_norm, amp_dtype=amp_dtype)
    return trainer, {"model_config": model_config.to_dict(), "class_names": list(train_ds.class_names)}


def default_hooks(params: Params, data_dir: str | Path, rank: int) -> list[HookBase]:
    """The hooks of every training run, in order: the epoch's row on every rank; precise batch norm on
    rank 0 (whose weights are the checkpoint); validation on every rank (rank 0 scores); progress lines
    on rank 0."""
    train, data_dir = params.train, Path(data_dir)
    hooks: list[HookBase] = [EpochMetrics(), BadImages(params.data.max_bad_fraction)]
    if rank == 0 and train.precise_bn_images:  # the training split's view: undecodable images replaced
        hooks.append(PreciseBN(functools.partial(precise_bn_dataset, params), train.precise_bn_images))
    if train.val_every:  # every rank: each infers its shard of the val split, rank 0 scores
        hooks.append(Validation(eval_dataset(data_dir / "val.json", params), train.val_every, train.batch_size))
    if rank == 0:
        hooks.append(StepLogger(train.log_every))
    return hooks


def eval_dataset(json_path: Path, params: Params) -> Any:
    """A split with the evaluation transforms (no flips), for validation: undecodable images are
    skipped (``data.bad_images: skip``), so the metrics exclude them, or stop the run (``fail``)."""
    from pipeline.data.dataset import CocoDetectionDataset

    data = params.data
    return CocoDetectionDataset(json_path, transforms=_eval_transforms(params), exif_orientation=data.exif_orientation,
                                on_bad_image="skip" if data.bad_images == "skip" else "fail")


def precise_bn_dataset(params: Params, trainer: Trainer) -> Any:
    """The trainer's training split with the evaluation transforms, for precise batch norm: a view
    that shares the split's records (:meth:`CocoDetectionDataset.with_transforms`), not a second load."""
    if trainer.dataset is None:
        raise ValueError("precise batch norm reads the training split: build the Trainer with dataset=")
    return trainer.dataset.with_transforms(_eval_transforms(params))


def _eval_transforms(params: Params) -> Callable:
    from pipeline.data.transforms import build_transforms

    resize = params.data.resize
    return build_transforms(False, resize.min_size, resize.max_size)


def _resume_from_ray_checkpoint(trainer: Trainer) -> None:
    """Continue from Ray Train's latest checkpoint of this run, if there is one."""
    import ray.train

    from pipeline.training.state import load_state

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as directory:
        saved = load_state(directory)
    trainer.load_state_dict(saved)
    if trainer.rank == 0:
        resized = (f"; world size {saved['world_size']} -> {trainer.world_size}: data resharded, "
                   f"lr {trainer.base_lr:.3g}" if saved["world_size"] != trainer.world_size else "")
        logger.info(f"resuming from the checkpoint after epoch {trainer.epoch} (global step {trainer.global_step})"
                    f"{resized}")


def _require_data(data_dir: Path) -> None:
    """A clear error when this node lacks the prepared data (e.g. a node that joined after preflight)."""
    missing = [name for name in ("train.json", "val.json") if not (data_dir / name).is_file()]
    if missing:
        import ray

        ctx = ray.get_runtime_context()
        raise FileNotFoundError(
            f"data_dir {data_dir}: {', '.join(missing)} not found on node {ctx.get_node_id()[:12]} "
            f"({ray.util.get_node_ip_address()}); every node that runs a worker needs the prepared data at "
            f"this path (a shared filesystem, or a copy on each node)")


def _quiet_ray_train_logs() -> None:
    """Drop Ray Train's per-report INFO lines ("Reporting training result ...") on this worker.

    Ray 2.60 logs them through ``logging.getLogger(__file__)`` of its context module, outside the
    ``ray.train`` logger that ``RunConfig(logging_config=...)`` controls.
    """
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray version: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)

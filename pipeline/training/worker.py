"""The per-worker training function that Ray Train runs on every DDP rank.

Layer 1 of 3 (see ``driver.py``): it receives everything through ``config`` (built by the
driver), never reads ``params.yaml`` or the environment itself.

Each rank reads its own share of the training images (``loader.py``: every image once per
epoch across the ranks, batches of one aspect-ratio group, the same number of steps on every
rank), every rank calls ``ray.train.report`` once per epoch and rank 0 attaches the checkpoint.
Epochs are idempotent: the batches and each image's augmentation follow from ``(seed, epoch)``,
the ranks' RNGs are reseeded from ``(seed, epoch, rank)`` at every epoch start, and a repeated
epoch replaces its row in the history.

Workers never touch the tracking store: rank 0's epoch report carries the epoch's metrics and
the progress rows it printed every ``train.log_every`` steps (:mod:`pipeline.tracking.progress`),
the local rank 0 of each node the driver does not sample adds the node's system-metric samples
(:mod:`pipeline.tracking.system_metrics`), and the driver logs them. One report per epoch keeps
the cost at one barrier per epoch.

Elastic runs: the world size may differ after a restart (``ray.num_workers: [min, max]``). The
checkpoint records the world size it was written with; the resumed epoch reshards the data for
the new world, the learning rate is rescaled for the new global batch, and the schedule
continues from the same point of the run (the start of the resumed epoch).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.params import Params
from pipeline.training import state as train_state
from pipeline.training.optim import build_optimizer, build_scheduler, resume_schedule, scaled_lr
from pipeline.training.precise_bn import recompute_bn_stats

__all__ = ["train_loop_per_worker"]

from pipeline.training.losses import NonFiniteLossError, check_finite, training_targets  # noqa: E402


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train on this rank; returns (on every rank) the status and the per-epoch history.

    ``config`` keys: ``params`` (:class:`Params`), ``data_dir`` (absolute), ``system_metrics``
    (a :class:`~pipeline.tracking.system_metrics.SystemMetricsSettings`, or None: no sampling),
    ``debug`` (test hooks: ``record_dir``, ``fault_at_step``, ``fault_marker``, ``hang_at_step``,
    ``nonfinite_at_step``).
    """
    import ray.train
    import ray.train.torch

    from detector import build_model
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.tracking import progress, system_metrics  # noqa
    from pipeline.training.loader import build_train_loader

    _quiet_ray_train_logs()
    params: Params = config["params"]
    train = params.train
    debug = config.get("debug") or {}
    data_dir = Path(config["data_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _require_data(data_dir)
    torch.set_num_threads(max(1, int(params.ray.cpus_per_worker)))
    device = ray.train.torch.get_device()

    resize = params.data.resize
    train_ds = CocoDetectionDataset(
        data_dir / "train.json",
        transforms=build_transforms(True, resize.min_size, resize.max_size,
                                    hflip_prob=train.hflip_prob, color_jitter=train.color_jitter),
    )
    if len(train_ds) < world:
        raise ValueError(f"{data_dir / 'train.json'}: {len(train_ds)} images are fewer than "
                         f"{world} workers; nothing to train on")
    train_loader = build_train_loader(train_ds, train, rank=rank, world=world, device=device,
                                      local_world_size=ctx.get_local_world_size())
    loader, sampler = train_loader.loader, train_loader.sampler
    steps_per_epoch = len(loader)
    if rank == 0:
        _say(f"data: {len(train_ds)} train images; {train_loader.describe()}")

    model_config = params.detector_config(train_ds.num_classes, list(train_ds.class_names))
    torch.manual_seed(train.seed)  # identical initial weights on every rank
    model = build_model(model_config)
    if train.compile:  # in place: the state dict keeps its keys
        model.backbone.compile()
    model = ray.train.torch.prepare_model(model)  # to device; DDP (gloo/NCCL) when world > 1
    bare: nn.Module = model.module if hasattr(model, "module") else model

    base_lr = scaled_lr(train, world)
    optimizer = build_optimizer(bare, train, base_lr)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch)
    amp_dtype = None
    if device.type == "cuda" and train.amp != "off":
        amp_dtype = torch.bfloat16 if train.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, global_step, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    resumed_optimizer_steps = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            saved = train_state.load_state(ckpt_dir)
        bare.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        start_epoch, global_step, history = saved["epoch"], saved["global_step"], saved["history"]
        # this world's learning rate, at the start of the resumed epoch of this world's schedule
        resume_schedule(optimizer, scheduler, base_lr, start_epoch * steps_per_epoch)
        resumed_optimizer_steps = len(optimizer.state)
        if rank == 0:
            resized = (f"; world size {saved['world_size']} -> {world}: data resharded, lr {base_lr:.3g}"
                       if saved["world_size"] != world else "")
            _say(f"resuming from the checkpoint after epoch {start_epoch} (global step {global_step}){resized}")
    _record(debug, rank, "start", {"start_epoch": start_epoch, "global_step": global_step,
                                   "optimizer_state_tensors": resumed_optimizer_steps,
                                   "node_id": ray.get_runtime_context().get_node_id(),
                                   "world_size": world, "base_lr": base_lr,
                                   "lr": optimizer.param_groups[0]["lr"], "code": sys.modules["pipeline"].__file__})

    val_ds = None
    if rank == 0 and train.val_every:
        val_ds = _eval_dataset(data_dir / "val.json", params)
    node_sampler = system_metrics.worker_sampler(config.get("system_metrics"), ctx.get_local_rank())
    first_report = True  # rank 0's first report of this (re)start carries the history
    run_start = time.perf_counter()
    steps_done_this_run = 0

    for epoch in range(start_epoch, train.epochs):
        train_state.seed_everything(train.seed, epoch, rank)
        sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        images_seen = 0
        epoch_start = time.perf_counter()
        seen_ids: list[int] = []
        step_rows: list[dict[str, float]] = []  # rank 0's progress rows, reported with the epoch
        for step, (images, targets) in enumerate(loader):
            _maybe_inject_fault(debug, rank, global_step)
            seen_ids += [int(t["image_id"]) for t in targets]
            step_start = time.perf_counter()
            images = [img.to(device, non_blocking=True) for img in images]
            tgts = training_targets(targets)
            autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                        else nullcontext())
            with autocast:
                loss_dict = model(images, tgts)
            names = sorted(loss_dict)
            total = sum(loss_dict[k] for k in names)
            if debug.get("nonfinite_at_step") == global_step:
                total = total * float("nan")
            # mean over ranks of every term and the total: one small all-reduce, also the finite check
            values = torch.stack([loss_dict[k].detach().float() for k in names] + [total.detach().float()])
            if world > 1:
                torch.distributed.all_reduce(values)
                values /= world
            reduced = dict(zip(names + ["loss"], values.tolist()))
            try:  # every rank sees the same reduced values, so all ranks stop together
                check_finite({k: reduced[k] for k in names}, epoch=epoch, step=step, global_step=global_step,
                             total=reduced["loss"])
            except NonFiniteLossError as err:
                # returning (not raising) keeps Ray's FailureConfig from retrying a deterministic failure
                if node_sampler is not None:
                    node_sampler.stop()
                return {"status": "nonfinite", "error": str(err), "history": history, "world_size": world}

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if train.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(bare.parameters(), train.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()

            global_step += 1
            steps_done_this_run += 1
            images_seen += len(images) * world
            for k, v in reduced.items():
                sums[k] = sums.get(k, 0.0) + v
            if rank == 0 and (step % train.log_every == 0 or step + 1 == steps_per_epoch):
                step_time = time.perf_counter() - step_start
                ips = len(images) * world / max(step_time, 1e-9)
                elapsed = time.perf_counter() - run_start
                remaining = (train.epochs * steps_per_epoch - global_step) * elapsed / steps_done_this_run
                _say(f"epoch {epoch + 1}/{train.epochs} step {step + 1}/{steps_per_epoch} "
                     f"loss {reduced['loss']:.3f} ({' '.join(f'{k[5:]} {reduced[k]:.3f}' for k in names)}) "
                     f"lr {lr:.2e} {ips:.1f} img/s ETA {_hms(remaining)}")
                step_rows.append({"step": global_step, **reduced, "lr": lr, "images_per_s": ips})

        epoch_time = time.perf_counter() - epoch_start
        _record(debug, rank, f"epoch{epoch}", {"image_ids": seen_ids, "world_size": world,
                                                 "mlflow_imported": "mlflow" in sys.modules})
        row: dict[str, Any] = {"epoch": epoch + 1}
        row |= {k: v / steps_per_epoch for k, v in sums.items()}
        row |= {"lr": optimizer.param_groups[0]["lr"], "images_per_s": images_seen / epoch_time,
                "epoch_time_s": epoch_time, "global_step": global_step, "world_size": world}
        if rank == 0 and epoch + 1 == train.epochs and train.precise_bn_images:
            # rank 0's weights are the checkpoint; training is over, so the ranks may now differ
            bn_start = time.perf_counter()
            used = recompute_bn_stats(bare, _eval_dataset(data_dir / "train.json", params), num_images=train.precise_bn_images)
            _say(f"precise batch norm: statistics recomputed over {used} train images "
                 f"in {time.perf_counter() - bn_start:.1f}s")
        if val_ds is not None and ((epoch + 1) % train.val_every == 0 or epoch + 1 == train.epochs):
            row |= _validate(bare, val_ds, params, device)
        history = [h for h in history if h["epoch"] != epoch + 1] + [row]  # a repeated epoch replaces its row
        if rank == 0:
            _say("epoch {}/{} done in {:.1f}s: loss {:.3f}, {:.1f} img/s{}".format(
                epoch + 1, train.epochs, epoch_time, row["loss"], row["images_per_s"],
                "".join(f", {k} {row[k]:.3f}" for k in ("AP50", "AP", "val_loss") if k in row)))
        metrics = progress.epoch_metrics(row, step_rows if rank == 0 else None,
                                         system=node_sampler.drain() if node_sampler is not None else None,
                                         history=history if rank == 0 and first_report else None)
        first_report = False
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                train_state.save_state(tmp, {
                    "model": bare.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "epoch": epoch + 1, "global_step": global_step, "history": history,
                    "rng": train_state.rng_state(), "model_config": model_config.to_dict(),
                    "class_names": list(train_ds.class_names), "world_size": world,
                })
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
    if node_sampler is not None:
        node_sampler.stop()
    return {"status": "ok", "history": history, "world_size": world, "steps_per_epoch": steps_per_epoch,
            "base_lr": base_lr}


# --------------------------------------------------------------------------- helpers
def _validate(model: nn.Module, dataset: Any, params: Params, device: torch.device) -> dict[str, float]:
    """COCO AP on the val split (rank 0, the bare model: no collectives)."""
    from pipeline.evaluation import evaluate_model

    # the model's own roi.score_threshold filters detections; no second threshold here
    metrics = evaluate_model(model, dataset, batch_size=params.train.batch_size, device=device,
                             score_threshold=0.0)
    model.train()
    return {k: float(v) for k, v in metrics.items() if k.startswith("AP") and _is_number(v)}


def _eval_dataset(json_path: Path, params: Params) -> Any:
    """A split with the evaluation transforms (no flips): for validation and precise batch norm."""
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms

    resize = params.data.resize
    return CocoDetectionDataset(json_path, transforms=build_transforms(False, resize.min_size, resize.max_size))


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


def _maybe_inject_fault(debug: dict[str, Any], rank: int, global_step: int) -> None:
    """Test hooks, once each (the first to create ``fault_marker``): rank ``fault_rank`` kills its
    process at ``fault_at_step``; any rank stops making progress at ``hang_at_step`` (the other
    ranks then wait in the next collective), until the test kills its node."""
    marker = debug.get("fault_marker")
    if marker is None:
        return
    exits = global_step == debug.get("fault_at_step") and rank == debug.get("fault_rank", 0)
    hangs = global_step == debug.get("hang_at_step")
    if not (exits or hangs):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if exits:
        _say(f"fault injection: rank {rank} exits at global step {global_step}")
        os._exit(1)
    _say(f"fault injection: rank {rank} hangs at global step {global_step}")
    time.sleep(3600)


def _record(debug: dict[str, Any], rank: int, what: str, data: dict[str, Any]) -> None:
    """Test hook: append what this rank did to ``record_dir/rank{rank}.jsonl``."""
    if not debug.get("record_dir"):
        return
    with open(Path(debug["record_dir"]) / f"rank{rank}.jsonl", "a") as f:
        f.write(json.dumps({"event": what, **data}) + "\n")


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


def _say(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)

"""The training DataLoader of one DDP rank: grouped batches, seeded augmentation, workers, pinned memory.

Layer 1 helper of ``loop.py``. Batches come from :class:`pipeline.data.batching.GroupedBatchSampler`
(every image once per epoch across ranks, one aspect-ratio group per batch, equal steps on every
rank); each image's augmentation is seeded from ``(train.seed, epoch, image)`` inside the loader
worker that makes it (:class:`pipeline.data.batching.SeededItems`), so persistent loader workers
get new augmentations every epoch and a repeated epoch (after a restart) gets the same ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.params import TrainParams

__all__ = ["TrainLoader", "build_train_loader", "resolve_loader_workers"]

MAX_AUTO_WORKERS = 8


@dataclass
class TrainLoader:
    loader: DataLoader
    sampler: object          # the GroupedBatchSampler: call ``set_epoch`` before each epoch
    grouped: bool            # batches hold one aspect-ratio group each
    group_sizes: dict[str, int]  # images per group ("portrait <0.79", ...), for the log
    workers: int
    pin_memory: bool

    def describe(self) -> str:
        batching = (f"grouped by aspect ratio ({', '.join(f'{k}: {v}' for k, v in self.group_sizes.items())} images)"
                    if self.grouped else "not grouped by aspect ratio")
        return (f"{len(self.loader)} steps per epoch per worker, batches {batching}; "
                f"{self.workers} loader workers, pin_memory {self.pin_memory}")


def resolve_loader_workers(setting: int | str, device: torch.device, local_world_size: int = 1) -> int:
    """DataLoader processes for one training worker; ``auto``:

    * CUDA: the CPUs this process may use, shared by the node's training workers, less one for the
      training process itself, between 1 and ``MAX_AUTO_WORKERS`` (decoding and resizing
      photographs must keep up with the GPU);
    * CPU: 0 (load in the training process): the model's step dominates and the worker's CPUs
      already run its torch threads.
    """
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_world_size) - 1))


def build_train_loader(dataset, train: TrainParams, *, rank: int, world: int, device: torch.device,
                       local_world_size: int = 1) -> TrainLoader:
    """The training loader of ``rank`` over ``dataset`` (a :class:`CocoDetectionDataset`).

    ``train.group_by_aspect_ratio``: ``auto`` groups when the images fall into more than one
    aspect-ratio group (COCO/VOC photographs), which is the same as ``false`` for equal-sized
    images (the synthetic default); ``true`` / ``false`` force it.
    """
    from pipeline.data.batching import GroupedBatchSampler, SeededItems, aspect_ratio_groups
    from pipeline.data.dataset import collate_detection

    ratios = np.asarray([dataset.aspect_ratio(i) for i in range(len(dataset))])
    groups = aspect_ratio_groups(ratios)
    setting = train.group_by_aspect_ratio
    grouped = bool(setting) if setting != "auto" else len(np.unique(groups)) > 1
    sizes = {}
    if grouped:
        for g in np.unique(groups).tolist():
            members = ratios[groups == g]
            kind = "portrait" if members.max() < 1 else "landscape"
            sizes[f"{kind} w/h {members.min():.2f}-{members.max():.2f}"] = int(len(members))
    else:
        groups = np.zeros(len(dataset), dtype=np.int64)
    sampler = GroupedBatchSampler(groups, train.batch_size, num_replicas=world, rank=rank, seed=train.seed)
    workers = resolve_loader_workers(train.loader_workers, device, local_world_size)
    pin = device.type == "cuda"
    loader = DataLoader(SeededItems(dataset), batch_sampler=sampler, collate_fn=collate_detection,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=pin)
    return TrainLoader(loader=loader, sampler=sampler, grouped=grouped, group_sizes=sizes, workers=workers,
                       pin_memory=pin)

"""Training batches for DDP: aspect-ratio groups, every image once per epoch, equal steps on every rank.

torchvision's detection references batch images of similar aspect ratio together
(``GroupedBatchSampler`` over ``create_aspect_ratio_groups``), so portrait and landscape images
are not padded into each other. There, every DDP rank groups its own shard of the
``DistributedSampler`` and tops up incomplete group batches with repeats, so some images are
seen twice in an epoch and the leftovers of other groups not at all. :class:`GroupedBatchSampler`
does the sharding itself, from one plan of the whole epoch that every rank computes identically
from ``(seed, epoch)``:

1. shuffle all images (like ``DistributedSampler``);
2. cut each aspect-ratio group (in that order) into batches of ``batch_size``; a group's last
   batch may be smaller;
3. make the number of batches a multiple of the world size by splitting the largest batches in
   two (DDP needs every rank at every step, and ``drop_last`` would lose images); only when there
   are fewer images than steps x ranks (a tiny dataset) are a few images repeated;
4. shuffle the order of the batches and deal them out: rank ``r`` takes batches
   ``r, r + W, r + 2W, ...``.

Every image is seen exactly once per epoch across the ranks, every batch holds one group (one
orientation), and every rank runs ``len(sampler)`` steps, the same in every epoch. A batch may be
smaller than ``batch_size`` (at most ``groups + W - 1`` of them per epoch).

Each yielded item is ``(image index, sample seed)``: :class:`SeededItems` runs the dataset's
random transforms under that seed, so an image's augmentation depends on ``(seed, epoch,
image)`` only, not on the rank, the world size, the loader worker or persistent loader state.

Shapes: ``N`` images, ``W`` ranks, ``B`` batch size.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["GroupedBatchSampler", "SeededItems", "aspect_ratio_groups"]

DEFAULT_GROUP_FACTOR = 3  # torchvision's --aspect-ratio-group-factor default: 2 * 3 + 2 = 8 groups


def aspect_ratio_groups(aspect_ratios: Sequence[float], factor: int = DEFAULT_GROUP_FACTOR) -> np.ndarray:
    """Group id ``(N,)`` of each ``width / height``, torchvision's ``create_aspect_ratio_groups``.

    The bin edges are ``2 ** linspace(-1, 1, 2 * factor + 1)`` (``[1.0]`` for factor 0); 1.0 is
    always an edge, so a group is all portrait (< 1) or all landscape/square (>= 1).
    """
    bins = sorted((2 ** np.linspace(-1, 1, 2 * factor + 1)).tolist()) if factor > 0 else [1.0]
    return np.asarray([bisect.bisect_right(bins, float(r)) for r in aspect_ratios], dtype=np.int64)


class GroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's batches of ``(image index, sample seed)`` for one epoch (see the module docstring).

    Args:
        group_ids: ``(N,)`` group of each image (e.g. :func:`aspect_ratio_groups`); all equal
            gives plain shuffled batches with the same guarantees.
        batch_size: images per batch and rank.
        num_replicas, rank: the DDP world size and this rank.
        seed: shared by all ranks; with :meth:`set_epoch` it fixes the epoch's plan.
        shuffle: False keeps the images in index order (within groups), for tests and evaluation.
    """

    def __init__(self, group_ids: Sequence[int] | np.ndarray, batch_size: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        self.group_ids = np.asarray(group_ids, dtype=np.int64).reshape(-1)
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < num_replicas, got {batch_size}, {rank}, "
                             f"{num_replicas}")
        if len(self.group_ids) < num_replicas:
            raise ValueError(f"{len(self.group_ids)} images are fewer than {num_replicas} DDP workers; "
                             "nothing to train on")
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        _, self.group_sizes = np.unique(self.group_ids, return_counts=True)
        batches = int(sum(math.ceil(n / batch_size) for n in self.group_sizes.tolist()))
        self.steps = math.ceil(batches / num_replicas)  # per rank; after splitting, batches = steps * W

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def plan(self) -> list[list[int]]:
        """The epoch's ``steps * W`` batches of image indices, for all ranks (rank ``r`` takes ``[r::W]``)."""
        n, B, W = len(self.group_ids), self.batch_size, self.num_replicas
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = order[np.argsort(self.group_ids[order], kind="stable")]  # (N,) grouped, shuffled within groups
        starts = np.concatenate([[0], np.cumsum(self.group_sizes)])  # groups in increasing id, as sorted
        batches = [order[s:e][k:k + B].tolist() for s, e in zip(starts[:-1].tolist(), starts[1:].tolist())
                   for k in range(0, e - s, B)]
        target = self.steps * W
        while len(batches) < target:  # split the largest batch (the first of equals) in two
            j = max(range(len(batches)), key=lambda i: len(batches[i]))
            if len(batches[j]) < 2:
                break
            big = batches[j]
            batches[j:j + 1] = [big[:(len(big) + 1) // 2], big[(len(big) + 1) // 2:]]
        for k in range(target - len(batches)):  # fewer images than batches needed: repeat a few
            batches.append(batches[k][:1])
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
        return batches

    def sample_seeds(self) -> np.ndarray:
        """``(N,)`` augmentation seed of every image for this epoch (the same on every rank)."""
        return np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**63 - 1, len(self.group_ids))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        seeds = self.sample_seeds()
        for batch in self.plan()[self.rank::self.num_replicas]:
            yield [(i, int(seeds[i])) for i in batch]


class SeededItems(Dataset):
    """``dataset`` indexed by ``(index, seed)``: the item is made with torch's RNG seeded by ``seed``.

    The caller's RNG state is restored afterwards, so the training process's own random stream
    (e.g. the detector's sampling) does not depend on how many loader workers there are.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

"""A seeded train/val split for sources without one of their own."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from pipeline.data.errors import EmptySplitError

T = TypeVar("T")


def seeded_split(items: list[T], seed: int, val_fraction: float, where: str) -> tuple[list[T], list[T]]:
    """Split ``items`` into ``(train, val)``, ``round(n * val_fraction)`` (at least 1) to val.

    The same ``seed`` and items give the same split; each side keeps the input order.

    Raises:
        EmptySplitError: fewer than two items, so one side would be empty.
    """
    n = len(items)
    if n < 2:
        raise EmptySplitError(f"{where}: {n} image(s) cannot be split into train and val; "
                              "add images or give a separate val set")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [item for i, item in enumerate(items) if i not in val_idx]
    val = [item for i, item in enumerate(items) if i in val_idx]
    return train, val

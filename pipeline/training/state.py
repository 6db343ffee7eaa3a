"""The training state inside a Ray Train checkpoint: save, load, RNG seeding.

A checkpoint directory holds one file, ``state.pt``: model, optimiser, scheduler and
grad-scaler state, the number of completed epochs, the global step, rank 0's RNG
states, the model config and the per-epoch history (so a resumed run keeps its
curve).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["STATE_FILE", "load_state", "rng_state", "save_state", "seed_everything"]

STATE_FILE = "state.pt"


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, numpy and ``random`` from ``(seed, epoch, rank)``.

    Seeding at every epoch start makes an epoch reproducible on its own, so an epoch
    repeated after a restart draws the same augmentations and samples as the first try.
    """
    value = (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)  # noqa: NPY002 (the global RNG that libraries use)
    torch.manual_seed(value)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),  # noqa: NPY002
        "python": repr(random.getstate()),
    }


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save(state, path)
    return path


def load_state(directory: str | Path) -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)

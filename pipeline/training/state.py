"""The training state inside a Ray Train checkpoint: save, load, RNG seeding.

A checkpoint directory holds one file, ``state.pt``: model, optimiser, scheduler and
grad-scaler state, the number of completed epochs, the global step, rank 0's RNG
states, the sampler's epoch and the loader's seed, the model config, the world size it was written with and the per-epoch history
(so a resumed run keeps its curve).

Checkpoints live on shared storage, so they are plain data only (tensors, numbers, strings,
lists, dicts) and are read with ``torch.load(weights_only=True)``: a file that smuggles a
pickled object is refused instead of running its code.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["STATE_FILE", "CheckpointError", "load_state", "rng_state", "save_state", "seed_everything",
           "set_rng_state"]

STATE_FILE = "state.pt"
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "global_step", "history", "model_config",
                 "class_names", "world_size")


class CheckpointError(ValueError):
    """A checkpoint folder that does not hold a readable, plain-data training state."""


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
    """This process's torch, NumPy and Python RNG states, as plain data (``weights_only``-loadable)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global RNG libraries use)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],  # noqa: NPY002
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save(state, path)
    return path


def load_state(directory: str | Path) -> dict[str, Any]:
    """The training state in ``directory/state.pt`` (``weights_only=True``).

    Raises:
        FileNotFoundError: there is no ``state.pt`` in ``directory``.
        CheckpointError: the file is not a torch file, holds pickled objects (refused), or
            is not a training state written by :func:`save_state`.
    """
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a training checkpoint folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as err:
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"{path} could not be read as a training checkpoint with weights_only=True "
            f"({type(err).__name__}: {reason}). Checkpoints hold plain data only (tensors, numbers, strings, "
            f"lists, dicts); a file with pickled objects is refused because loading it could run code") from None
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else list(REQUIRED_KEYS)
    if missing:
        raise CheckpointError(f"{path} is not a training state written by pipeline.training.state.save_state "
                              f"(missing {', '.join(missing)})")
    return state

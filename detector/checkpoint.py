"""Self-describing checkpoints: config + class names + weights (+ extra state)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from detector.config import DetectorConfig
from detector.model import FasterRCNN, build_model

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "detector-checkpoint"
CHECKPOINT_VERSION = 1
_EXPECTED = (
    f"a {CHECKPOINT_FORMAT!r} file written by detector.save_checkpoint "
    "(a dict with 'format', 'version', 'config', 'num_classes', 'class_names', 'state_dict', 'extra')"
)


def save_checkpoint(
    path: str | os.PathLike,
    model: FasterRCNN,
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` (which must carry its ``config``) to ``path``, atomically.

    ``extra`` holds plain data (numbers, strings, tensors, nested dicts/lists), e.g.
    the epoch or optimizer state for resuming; it must load with ``weights_only=True``.
    """
    if getattr(model, "config", None) is None:
        raise ValueError("save_checkpoint: the model has no .config; build it with detector.build_model")
    config: DetectorConfig = model.config
    names = class_names if class_names is not None else model.class_names
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "num_classes": config.num_classes,
        "class_names": list(names) if names is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint's dict (``weights_only=True``); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; expected {_EXPECTED}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ValueError(
            f"checkpoint {str(path)!r} could not be read as a torch file with weights_only=True "
            f"({err.__class__.__name__}: {reason}); expected {_EXPECTED}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        what = "a plain state_dict" if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"checkpoint {str(path)!r} is not a detector checkpoint (found {what}); expected {_EXPECTED}"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this code reads {CHECKPOINT_VERSION}"
        )
    missing = {"config", "num_classes", "state_dict"} - set(payload)
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {sorted(missing)}; expected {_EXPECTED}")
    return payload


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FasterRCNN:
    """Rebuild the model from a checkpoint (config and class names inside), in eval mode.

    A model trained from pretrained weights is rebuilt with the same structure
    (frozen batch norm and stages) but without fetching those weights: the
    checkpoint's replace them, so loading needs no network.
    """
    payload = read_checkpoint(path, map_location)
    cfg = dict(payload["config"])
    try:
        config = DetectorConfig.from_dict(
            cfg, num_classes=payload["num_classes"], class_names=payload.get("class_names"), prefix="config"
        )
    except ValueError as err:
        raise ValueError(f"checkpoint {str(path)!r} has an invalid config: {err}") from None
    model = build_model(config, load_pretrained=False)
    model.load_state_dict(payload["state_dict"])
    model.to(map_location)
    model.eval()
    return model

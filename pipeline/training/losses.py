"""Loss checks of a training step and the targets a step trains on."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["NonFiniteLossError", "check_finite", "training_targets"]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the epoch, step and loss terms."""


def check_finite(losses: dict[str, float], *, epoch: int, step: int, global_step: int,
                 total: float | None = None) -> None:
    """Raise :class:`NonFiniteLossError` if any loss term or the total (default: their sum) is not finite."""
    total = sum(losses.values()) if total is None else total
    if all(math.isfinite(v) for v in losses.values()) and math.isfinite(total):
        return
    terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
    raise NonFiniteLossError(
        f"non-finite loss at epoch {epoch + 1}, step {step + 1} (global step {global_step + 1}): "
        f"total={total:.4g} ({terms}); lower train.lr, enable train.grad_clip_norm or check the data"
    )


def training_targets(targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Boxes and labels the model trains on: crowd regions (``iscrowd=1``) removed.

    They stay on the host: the model checks them there and copies the padded batch to its
    device once (no device-to-host sync for the checks).
    """
    out = []
    for t in targets:
        keep = t["iscrowd"] == 0 if "iscrowd" in t else torch.ones(len(t["boxes"]), dtype=torch.bool)
        out.append({"boxes": t["boxes"][keep].to(torch.float32), "labels": t["labels"][keep].to(torch.int64)})
    return out

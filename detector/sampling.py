"""Balanced foreground/background sampling of matched predictions, per image.

Shapes: ``B`` images, ``N`` candidates per image, ``S = min(batch_size_per_image, N)``
sample slots per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.structures import BACKGROUND, FOREGROUND

__all__ = ["sample_balanced"]


def sample_balanced(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw up to ``batch_size_per_image`` candidates per image, at most a
    ``positive_fraction`` of them foreground; background fills the rest.

    Vectorised over images with fixed output shapes (no device-to-host sync): every
    candidate gets a random key, a ``topk`` on the keys of each kind picks a uniform
    random subset in each row, and a mask says which of the ``S`` slots are used.

    Args:
        labels: ``(B, N)`` in ``{IGNORE, BACKGROUND, FOREGROUND}``.
        generator: optional ``torch.Generator`` (on ``labels.device``) for reproducibility.

    Returns:
        ``(index, mask)``: ``(B, S)`` int64 candidate indices (foreground of an image
        first, then background; arbitrary in unused slots) and ``(B, S)`` bool, which
        slots hold a sample (a prefix of each row).
    """
    B, N = labels.shape
    S = min(batch_size_per_image, N)
    max_fg = int(batch_size_per_image * positive_fraction)
    fg, bg = labels == FOREGROUND, labels == BACKGROUND
    num_fg = fg.sum(1).clamp(max=max_fg)  # (B,)
    num_bg = (batch_size_per_image - num_fg).clamp(max=bg.sum(1))  # (B,)

    keys = torch.rand(B, N, generator=generator, device=labels.device)  # in [0, 1)
    # candidates of the wrong kind get key -1 and sort last; the counts mask them out
    fg_idx = keys.masked_fill(~fg, -1.0).topk(min(max_fg, S), dim=1).indices  # (B, k_fg)
    bg_idx = keys.masked_fill(~bg, -1.0).topk(S, dim=1).indices  # (B, S)
    if fg_idx.shape[1] < S:  # pad to S columns; columns >= num_fg come from bg_idx anyway
        fg_idx = torch.cat([fg_idx, bg_idx[:, : S - fg_idx.shape[1]]], dim=1)
    slot = torch.arange(S, device=labels.device)[None, :]  # (1, S)
    # slot j holds foreground j while j < num_fg, then background j - num_fg
    bg_col = (slot - num_fg[:, None]).clamp(min=0)  # (B, S)
    index = torch.where(slot < num_fg[:, None], fg_idx, bg_idx.gather(1, bg_col))
    mask = slot < (num_fg + num_bg)[:, None]
    return index, mask

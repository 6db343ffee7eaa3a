"""Balanced foreground/background sampling of matched predictions, per image.

Shapes: ``B`` images, ``N`` candidates per image, ``S`` sampled pairs in the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_balanced"]


def sample_balanced(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw up to ``batch_size_per_image`` candidates per image, at most a
    ``positive_fraction`` of them foreground; background fills the rest.

    Vectorised over images: every candidate gets a random key, and a ``topk`` on
    the keys of each kind picks a uniform random subset in each row.

    Args:
        labels: ``(B, N)`` in ``{-1 ignore, 0 background, 1 foreground}``.
        generator: optional ``torch.Generator`` (on ``labels.device``) for reproducibility.

    Returns:
        ``(batch_idx, idx)``: two ``(S,)`` int64 tensors, ordered by image, foreground
        of an image first; ``labels[batch_idx, idx]`` are the sampled labels.
    """
    B, N = labels.shape
    max_fg = int(batch_size_per_image * positive_fraction)
    fg, bg = labels == 1, labels == 0
    num_fg = fg.sum(1).clamp(max=max_fg)  # (B,)
    num_bg = (batch_size_per_image - num_fg).clamp(max=bg.sum(1))  # (B,)

    keys = torch.rand(B, N, generator=generator, device=labels.device)  # in [0, 1)
    k_fg, k_bg = min(max_fg, N), min(batch_size_per_image, N)
    # candidates of the wrong kind get key -1 and sort last; the count masks them out
    fg_idx = keys.masked_fill(~fg, -1.0).topk(k_fg, dim=1).indices  # (B, k_fg)
    bg_idx = keys.masked_fill(~bg, -1.0).topk(k_bg, dim=1).indices  # (B, k_bg)
    idx = torch.cat([fg_idx, bg_idx], dim=1)  # (B, k_fg + k_bg)
    rank = torch.arange(idx.shape[1], device=labels.device)
    take = torch.cat(
        [rank[None, :k_fg] < num_fg[:, None], rank[None, : idx.shape[1] - k_fg] < num_bg[:, None]], dim=1
    )  # (B, k_fg + k_bg)
    batch_idx = torch.arange(B, device=labels.device)[:, None].expand_as(idx)
    return batch_idx[take], idx[take]

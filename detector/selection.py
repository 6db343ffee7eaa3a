"""Fixed-shape selection of ragged per-image results, without device-to-host syncs.

Shapes: ``M`` candidate boxes (all images flat), ``B`` images, ``W`` slots per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pack_per_image"]


def pack_per_image(image_idx: Tensor, keep: Tensor, num_images: int, width: int) -> tuple[Tensor, Tensor]:
    """Slots ``(B, W)`` for the best ``W`` kept items of each image.

    Args:
        image_idx: ``(M,)`` int64 image of each item, items in descending-score order.
        keep: ``(M,)`` bool; items with ``False`` never get a slot.
        num_images: ``B``.
        width: ``W`` slots per image.

    Returns:
        ``(index, valid)``: ``(B, W)`` int64 positions into the ``M`` items (score order
        within an image; 0 in empty slots) and ``(B, W)`` bool, valid slots first.
    """
    device = image_idx.device
    M = image_idx.numel()
    # kept items of an image first, each group still in score order (stable sort)
    order = torch.sort(image_idx * 2 + (~keep).to(torch.int64), stable=True).indices  # (M,)
    img, ok = image_idx[order], keep[order]
    counts = torch.zeros(num_images, dtype=torch.int64, device=device).scatter_add_(
        0, img, torch.ones_like(img)
    )  # (B,) items per image, kept or not
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(M, device=device) - starts[img]  # (M,) position within its image
    take = ok & (rank < width)
    # every item not taken writes into a dump slot of its own (no duplicate scatter indices)
    slot = torch.where(take, img * width + rank, num_images * width + torch.arange(M, device=device))
    index = torch.zeros(num_images * width + M, dtype=torch.int64, device=device).scatter_(0, slot, order)
    valid = torch.zeros(num_images * width + M, dtype=torch.bool, device=device).scatter_(0, slot, take)
    return index[: num_images * width].view(num_images, width), valid[: num_images * width].view(
        num_images, width
    )

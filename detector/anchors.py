"""Anchor boxes for FPN levels.

Shapes: ``H, W`` feature map size of one level; ``A`` anchors per location
(``len(scales) * len(aspect_ratios)``).

Conventions (the seed's, which put anchors at cell centres):

* the location ``(i, j)`` (row ``i``, column ``j``) of a level with stride ``s``
  is centred at ``x = (j + 0.5) * s``, ``y = (i + 0.5) * s``;
* an anchor has area ``(s * scale) ** 2`` and ``aspect_ratio = height / width``
  (torchvision's convention): ``width = sqrt(area / ratio)``, ``height = area / width``;
* anchors of one level are ordered location-major, then anchor (ratio-major,
  then scale), matching an RPN head output reshaped
  ``(B, A, H, W) -> (B, H, W, A) -> (B, H*W*A)``.

Unlike torchvision's ``AnchorGenerator`` (top-left offsets, rounded corners),
anchors here are exact and centred.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detector.anchor_cell import cell_anchor_rows

__all__ = ["AnchorGenerator", "cell_anchors", "grid_centers"]


def grid_centers(
    height: int,
    width: int,
    stride: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Centres ``(H*W, 2)`` as ``(x, y)`` of a ``height x width`` grid, row-major.

    Location ``(i, j)`` sits at ``((j + 0.5) * stride, (i + 0.5) * stride)``.
    """
    dtype = dtype or torch.float32
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride  # (W,)
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride  # (H,)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1)


def cell_anchors(
    stride: int,
    scales: Sequence[float],
    aspect_ratios: Sequence[float],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Zero-centred anchors ``(A, 4)`` xyxy for one location, ``A = len(scales) * len(aspect_ratios)``:
    :func:`detector.anchor_cell.cell_anchor_rows` (ratio-major then scale, as torchvision;
    ``aspect_ratio = height / width``, area ``(stride * scale) ** 2``).
    """
    rows = cell_anchor_rows(stride, scales, aspect_ratios)
    # built on the host and copied without waiting for the device (torch.tensor(..., device=)
    # would make a blocking copy: a host-device sync)
    return torch.tensor(rows, dtype=dtype or torch.float32).to(device, non_blocking=True)


class AnchorGenerator(nn.Module):
    """Anchors for each FPN level from feature shapes and explicit strides.

    Args:
        strides: stride of each level in input pixels, e.g. ``(8, 16, 32)``.
        scales: anchor side in units of the stride; one list for every level
            (``[8]``) or one list per level (``[[4, 8], [4, 8], [4, 8]]``).
            Every level must have the same number of scales (the RPN head is shared).
        aspect_ratios: ``height / width`` ratios, shared by all levels.

    Results are cached per ``(H, W, stride, device, dtype)``.
    """

    def __init__(
        self,
        strides: Sequence[int],
        scales: Sequence[float] | Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
    ) -> None:
        super().__init__()
        if len(strides) == 0:
            raise ValueError("AnchorGenerator needs at least one stride")
        if len(scales) == 0 or len(aspect_ratios) == 0:
            raise ValueError(f"empty anchor scales ({scales}) or aspect_ratios ({aspect_ratios})")
        if isinstance(scales[0], Sequence):
            per_level = [[float(s) for s in level] for level in scales]  # type: ignore[union-attr]
            if len(per_level) != len(strides):
                raise ValueError(
                    f"anchor scales given per level must have one list per level: "
                    f"{len(per_level)} lists for {len(strides)} strides"
                )
            if len({len(level) for level in per_level}) != 1 or len(per_level[0]) == 0:
                raise ValueError(f"every level needs the same (non-zero) number of scales, got {per_level}")
        else:
            per_level = [[float(s) for s in scales]] * len(strides)  # type: ignore[arg-type]
        for value in [s for level in per_level for s in level] + [float(r) for r in aspect_ratios]:
            if not value > 0:
                raise ValueError(f"anchor scales and aspect ratios must be > 0, got {value}")
        self.strides = [int(s) for s in strides]
        self.scales = per_level
        self.aspect_ratios = [float(r) for r in aspect_ratios]
        self._cache: dict[tuple, Tensor] = {}
        self._max_cache = 256

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.scales[0]) * len(self.aspect_ratios)

    def extra_repr(self) -> str:
        return f"strides={self.strides}, scales={self.scales}, aspect_ratios={self.aspect_ratios}"

    def level_anchors(
        self,
        level: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Anchors ``(H*W*A, 4)`` of one level (cached)."""
        stride = self.strides[level]
        dtype = dtype or torch.float32
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (height, width, stride, tuple(self.scales[level]), device, dtype)
        anchors = self._cache.get(key)
        if anchors is None:
            centers = grid_centers(height, width, stride, device=device, dtype=torch.float64)  # (H*W, 2)
            base = cell_anchors(stride, self.scales[level], self.aspect_ratios, device, torch.float64)
            # (H*W, 1, 4) + (1, A, 4) -> (H*W, A, 4) -> (H*W*A, 4): location-major, then anchor
            anchors = (centers.repeat(1, 2)[:, None, :] + base[None, :, :]).reshape(-1, 4).to(dtype)
            if len(self._cache) >= self._max_cache:  # many distinct image sizes: start afresh
                self._cache.clear()
            self._cache[key] = anchors
        return anchors

    def forward(
        self,
        feature_shapes: Sequence[tuple[int, int]],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> list[Tensor]:
        """One ``(H*W*A, 4)`` anchor tensor per level, for ``(H, W)`` feature shapes in level order."""
        if len(feature_shapes) != len(self.strides):
            raise ValueError(f"got {len(feature_shapes)} feature shapes for {len(self.strides)} strides")
        return [
            self.level_anchors(level, int(h), int(w), device, dtype)
            for level, (h, w) in enumerate(feature_shapes)
        ]

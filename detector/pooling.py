"""Multi-level RoIAlign as one weighted ``embedding_bag`` over channels-last rows.

torchvision's CPU ``roi_align`` backward scatters channel by channel through
``(B, C, H, W)`` memory and costs as much as the whole backbone backward here.
This module computes exactly the same bilinear samples (``aligned=True``, a fixed
``sampling_ratio``) as a weighted sum of feature *rows*: every level's map is laid
out as ``(B*H*W, C)`` rows, each output bin is a bag of ``sr*sr*4`` (sample point,
corner) rows with bilinear weights, and ``F.embedding_bag`` gathers them; its
backward is a contiguous row-wise scatter. All levels go through one call.

Shapes: ``R`` RoIs, ``C`` channels, ``S`` output size, ``sr`` sampling ratio,
``B`` images, ``H_l, W_l`` level-``l`` map size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.boxes import box_area

__all__ = ["MultiLevelRoIAlign", "roi_align_rows"]


def _axis_samples(lo: Tensor, hi: Tensor, size: Tensor, S: int, sr: int) -> tuple[Tensor, ...]:
    """Bilinear sampling along one axis, following torchvision's ``roi_align`` (aligned=True).

    Args:
        lo, hi: ``(R,)`` RoI start/end in feature-map units (already shifted by -0.5).
        size: ``(R,)`` extent of the map along this axis.

    Returns:
        ``low, high`` ``(R, S, sr)`` int64 cell indices and ``w_low, w_high`` ``(R, S, sr)``
        weights (zero for samples outside ``[-1, size]``).
    """
    bin_size = (hi - lo) / S  # (R,)
    steps = (
        torch.arange(S, device=lo.device, dtype=lo.dtype)[:, None]
        + (torch.arange(sr, device=lo.device, dtype=lo.dtype)[None, :] + 0.5) / sr
    )  # (S, sr): bin index + sub-sample offset
    pos = lo[:, None, None] + steps[None] * bin_size[:, None, None]  # (R, S, sr)
    size_f = size.to(pos.dtype)[:, None, None]
    inside = (pos >= -1.0) & (pos <= size_f)
    pos = pos.clamp(min=0)
    low = pos.floor()
    at_edge = low >= size_f - 1
    low = torch.where(at_edge, size_f - 1, low)
    pos = torch.where(at_edge, low, pos)
    high = torch.where(at_edge, low, low + 1)
    frac = pos - low
    w_high = frac * inside
    w_low = (1 - frac) * inside
    return low.long(), high.long(), w_low, w_high


def roi_align_rows(
    rows: Tensor,
    row_offset: Tensor,
    extent: Tensor,
    row_width: Tensor,
    boxes: Tensor,
    spatial_scale: Tensor,
    output_size: int,
    sampling_ratio: int,
) -> Tensor:
    """RoIAlign of ``(R, 4)`` boxes from a table of feature rows -> ``(R, C, S, S)``.

    Args:
        rows: ``(M, C)`` feature rows (every level's ``(B, H, W, C)`` map, flattened).
        row_offset: ``(R,)`` row of cell ``(0, 0)`` of each RoI's image and level.
        extent: ``(R, 2)`` ``(height, width)`` of the map area each RoI may sample
            (its image's own extent: samples beyond behave as at a map border).
        row_width: ``(R,)`` row stride ``W_l`` of each RoI's level.
        spatial_scale: ``(R,)`` ``1 / stride`` of each RoI's level.
    """
    R, S, sr = boxes.shape[0], output_size, sampling_ratio
    if R == 0:
        return rows.new_zeros(0, rows.shape[1], S, S)
    b = boxes.to(rows.dtype if rows.is_floating_point() else torch.float32) * spatial_scale[:, None] - 0.5
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(b[:, 1], b[:, 3], extent[:, 0], S, sr)  # (R, S, sr)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(b[:, 0], b[:, 2], extent[:, 1], S, sr)
    # row of each y sample (with the RoI's image/level offset) and column of each x sample
    ys = torch.stack([y_lo, y_hi], -1) * row_width[:, None, None, None] + row_offset[:, None, None, None]
    xs = torch.stack([x_lo, x_hi], -1)  # (R, S, sr, 2)
    if rows.shape[0] < 2**31:  # int32 indices: cheaper broadcasting below
        ys, xs = ys.int(), xs.int()
    wy = torch.stack([wy_lo, wy_hi], -1) / (sr * sr)  # the bin averages its sr*sr samples
    wx = torch.stack([wx_lo, wx_hi], -1)
    # (R, Sy, 1, sry, 1, 2, 1) x (R, 1, Sx, 1, srx, 1, 2) -> (R, Sy, Sx, sry, srx, 2, 2)
    index = ys[:, :, None, :, None, :, None] + xs[:, None, :, None, :, None, :]
    weight = wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]
    # one bag of sr*sr*4 weighted rows per output bin: (R*S*S, sr*sr*4)
    pooled = F.embedding_bag(
        index.reshape(R * S * S, -1),
        rows,
        mode="sum",
        per_sample_weights=weight.reshape(R * S * S, -1).to(rows.dtype),
    )  # (R*S*S, C)
    # (R*S*S, C) -> (R, S, S, C) -> (R, C, S, S), torchvision's layout
    return pooled.view(R, S, S, -1).permute(0, 3, 1, 2)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign from the FPN level matching each box's size (FPN paper, eq. 1).

    A box of side ``sqrt(area)`` goes to level
    ``floor(canonical_level + log2(sqrt(area) / canonical_size))`` clamped to the
    pooled levels. Strides are explicit (nothing is inferred from shapes). The
    samples equal ``torchvision.ops.roi_align(..., aligned=True)`` on each image's
    own feature map, so results do not depend on how the batch was padded.

    Args:
        levels: FPN levels of the feature list given to ``forward`` (e.g. ``[3, 4, 5, 6]``).
        output_size: ``S``.
        sampling_ratio: ``sr >= 1`` sample points per bin and axis.
        pooled_levels: the levels RoIs may be pooled from (default: those <= 5; like
            torchvision, the max-pooled p6 is for proposals only).
    """

    def __init__(
        self,
        levels: list[int],
        output_size: int,
        sampling_ratio: int,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
        pooled_levels: list[int] | None = None,
    ) -> None:
        super().__init__()
        if sampling_ratio < 1:
            raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
        self.levels = list(levels)
        self.pooled_levels = pooled_levels or [lv for lv in levels if lv <= 5] or [levels[0]]
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def assign_levels(self, boxes: Tensor) -> Tensor:
        """``(R, 4)`` boxes -> ``(R,)`` FPN level of each."""
        side = box_area(boxes).clamp(min=0).sqrt()
        level = torch.floor(self.canonical_level + torch.log2(side / self.canonical_size + 1e-6))
        return level.clamp(min(self.pooled_levels), max(self.pooled_levels)).to(torch.int64)

    def forward(
        self, features: list[Tensor], boxes: Tensor, batch_idx: Tensor, padded_sizes: Tensor | None = None
    ) -> Tensor:
        """Pool ``(R, 4)`` boxes of images ``batch_idx`` ``(R,)`` -> ``(R, C, S, S)``.

        Args:
            features: per level ``(B, C, H_l, W_l)``, in ``levels`` order.
            padded_sizes: ``(B, 2)`` each image's own padded size in pixels when the
                batch mixes sizes (None: every image fills the maps).
        """
        device = boxes.device
        maps = [features[self.levels.index(lv)] for lv in self.pooled_levels]
        # every level's (B, C, H, W) -> (B*H*W, C) rows, stacked into one table
        rows = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps])
        sizes = torch.tensor([list(m.shape[-2:]) for m in maps], device=device)  # (L, 2)
        starts = torch.cumsum(
            torch.tensor([0] + [m[:, 0].numel() for m in maps[:-1]], device=device), 0
        )  # (L,)
        level = self.assign_levels(boxes) - min(self.pooled_levels)  # (R,) index into pooled levels
        strides = torch.tensor([2**lv for lv in self.pooled_levels], device=device)[level]  # (R,)
        hw = sizes[level]  # (R, 2)
        if padded_sizes is None:
            extent = hw
        else:
            extent = torch.minimum(
                torch.div(padded_sizes[batch_idx], strides[:, None], rounding_mode="floor"), hw
            )
        row_offset = starts[level] + batch_idx * hw[:, 0] * hw[:, 1]
        return roi_align_rows(
            rows,
            row_offset,
            extent,
            hw[:, 1],
            boxes,
            1.0 / strides.to(boxes.dtype),
            self.output_size,
            self.sampling_ratio,
        )

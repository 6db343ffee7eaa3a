"""Multi-level RoIAlign (FPN): per-RoI level assignment, then bilinear pooling.

Two backends compute the same samples as ``torchvision.ops.roi_align(aligned=True)``
with a fixed ``sampling_ratio``:

* ``"rows"`` (CPU default): one weighted ``embedding_bag`` over channels-last feature
  rows. torchvision's CPU ``roi_align`` backward scatters channel by channel through
  ``(B, C, H, W)`` memory and costs as much as the whole backbone backward here. Every
  level's map is laid out as ``(B*H*W, C)`` rows, each output bin is a bag of
  ``sr*sr*4`` (sample point, corner) rows with bilinear weights, and ``F.embedding_bag``
  gathers them; its backward is a contiguous row-wise scatter. All levels go through one
  call, so there is no data-dependent split and no device-to-host sync.
* ``"torchvision"`` (CUDA default): ``torchvision.ops.roi_align`` per level, its tuned
  CUDA kernel; RoIs are sorted by level once and split with a single sync.

Precision: sample positions and bilinear weights are always computed in float32 from
float32 boxes, and the features are pooled in float32 (as torchvision's ``roi_align``
does under autocast); the output has the features' dtype. Computing positions in
bfloat16 would misplace samples by up to half a cell at COCO map sizes.

Shapes: ``R`` RoIs, ``C`` channels, ``S`` output size, ``sr`` sampling ratio,
``B`` images, ``H_l, W_l`` level-``l`` map size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detector.boxes import box_area

__all__ = ["MultiLevelRoIAlign", "roi_align_rows"]

BACKENDS = ("auto", "rows", "torchvision")


def _axis_samples(lo: Tensor, hi: Tensor, size: int, S: int, sr: int) -> tuple[Tensor, ...]:
    """Bilinear sampling along one axis, following torchvision's ``roi_align`` (aligned=True).

    Args:
        lo, hi: ``(R,)`` float32 RoI start/end in feature-map units (already shifted by -0.5).
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
    map_size: Tensor,
    boxes: Tensor,
    spatial_scale: Tensor,
    output_size: int,
    sampling_ratio: int,
) -> Tensor:
    """RoIAlign of ``(R, 4)`` boxes from a table of feature rows -> ``(R, C, S, S)``.

    Args:
        rows: ``(M, C)`` feature rows (every level's ``(B, H, W, C)`` map, flattened).
        row_offset: ``(R,)`` row of cell ``(0, 0)`` of each RoI's image and level.
        map_size: ``(R, 2)`` ``(H_l, W_l)`` of each RoI's level.
        boxes: ``(R, 4)`` xyxy in input pixels (positions are computed in float32).
        spatial_scale: ``(R,)`` ``1 / stride`` of each RoI's level.
    """
    R, S, sr = boxes.shape[0], output_size, sampling_ratio
    if R == 0:
        return rows.new_zeros(0, rows.shape[1], S, S)
    dtype = torch.promote_types(rows.dtype, torch.float32)
    b = boxes.to(dtype) * spatial_scale.to(dtype)[:, None] - 0.5  # (R, 4) in map units, >= float32
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(b[:, 1], b[:, 3], map_size[:, 0], S, sr)  # (R, S, sr)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(b[:, 0], b[:, 2], map_size[:, 1], S, sr)
    # row of each y sample (with the RoI's image/level offset) and column of each x sample
    ys = torch.stack([y_lo, y_hi], -1) * map_size[:, 1, None, None, None] + row_offset[:, None, None, None]
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
    # (R*S*S, C) -> (R, S, S, C) -> (R, C, S, S), torchvision's layout (channels-last in memory)
    return pooled.view(R, S, S, -1).permute(0, 3, 1, 2)


def _table(values: list, device: torch.device) -> Tensor:
    """A small int64 lookup table built on the host and copied without waiting for the device."""
    return torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign from the FPN level matching each box's size (FPN paper, eq. 1).

    A box of side ``sqrt(area)`` goes to level
    ``floor(canonical_level + log2(sqrt(area) / canonical_size))`` clamped to the
    pooled levels (torchvision's ``LevelMapper``). Strides are explicit (nothing is
    inferred from shapes). Both backends equal ``torchvision.ops.roi_align(...,
    aligned=True)`` on the level's map.

    Args:
        levels: FPN levels of the feature list given to ``forward`` (e.g. ``[3, 4, 5, 6]``).
        output_size: ``S``.
        sampling_ratio: ``sr >= 1`` sample points per bin and axis.
        pooled_levels: the levels RoIs may be pooled from (default: those <= 5; like
            torchvision, the max-pooled p6 is for proposals only).
        backend: ``"rows"``, ``"torchvision"`` or ``"auto"`` (torchvision on CUDA, rows elsewhere).
    """

    def __init__(
        self,
        levels: list[int],
        output_size: int,
        sampling_ratio: int,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
        pooled_levels: list[int] | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if sampling_ratio < 1:
            raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.levels = list(levels)
        self.pooled_levels = pooled_levels or [lv for lv in levels if lv <= 5] or [levels[0]]
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.backend = backend

    def extra_repr(self) -> str:
        return (f"pooled_levels={self.pooled_levels}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}, backend={self.backend!r}")

    def assign_levels(self, boxes: Tensor) -> Tensor:
        """``(R, 4)`` boxes -> ``(R,)`` FPN level of each."""
        side = box_area(boxes.float()).clamp(min=0).sqrt()
        level = torch.floor(self.canonical_level + torch.log2(side / self.canonical_size + 1e-6))
        return level.clamp(min(self.pooled_levels), max(self.pooled_levels)).to(torch.int64)

    def forward(self, features: list[Tensor], boxes: Tensor, batch_idx: Tensor) -> Tensor:
        """Pool ``(R, 4)`` boxes of images ``batch_idx`` ``(R,)`` -> ``(R, C, S, S)``.

        Args:
            features: per level ``(B, C, H_l, W_l)``, in ``levels`` order.
        """
        maps = [features[self.levels.index(lv)] for lv in self.pooled_levels]
        level = self.assign_levels(boxes) - min(self.pooled_levels)  # (R,) index into pooled levels
        backend = self.backend
        if backend == "auto":
            backend = "torchvision" if boxes.device.type == "cuda" else "rows"
        if backend == "torchvision":
            return self._pool_torchvision(maps, boxes, batch_idx, level)
        device = boxes.device
        # every level's (B, C, H, W) -> (B*H*W, C) rows (a view when channels-last), one table,
        # pooled in float32 whatever the features' precision
        rows = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps])
        rows = rows.to(torch.promote_types(rows.dtype, torch.float32))
        sizes = _table([list(m.shape[-2:]) for m in maps], device)  # (L, 2)
        starts = _table([sum(m[:, 0].numel() for m in maps[:k]) for k in range(len(maps))], device)  # (L,)
        hw = sizes[level]  # (R, 2)
        stride = torch.pow(2.0, (level + min(self.pooled_levels)).float())  # (R,)
        pooled = roi_align_rows(
            rows,
            starts[level] + batch_idx * hw[:, 0] * hw[:, 1],
            hw,
            boxes,
            1.0 / stride,
            self.output_size,
            self.sampling_ratio,
        )
        return pooled.to(maps[0].dtype)

    def _pool_torchvision(self, maps: list[Tensor], boxes: Tensor, batch_idx: Tensor, level: Tensor) -> Tensor:
        """``torchvision.ops.roi_align`` per level: RoIs sorted by level, split with one sync."""
        L, S = len(maps), self.output_size
        order = torch.argsort(level, stable=True)
        counts = torch.zeros(L, dtype=torch.int64, device=boxes.device).scatter_add_(
            0, level, torch.ones_like(level)
        )
        rois = torch.cat([batch_idx[:, None].to(torch.float32), boxes.float()], dim=1)[order]  # (R, 5)
        outs = [
            roi_align(m, r, S, 2.0 ** -lv, self.sampling_ratio, aligned=True)
            for m, r, lv in zip(maps, rois.split(counts.tolist()), self.pooled_levels)
        ]  # torchvision pools in float32 under autocast
        pooled = torch.cat(outs).to(maps[0].dtype)
        return pooled[torch.argsort(order)]

"""Best anchor IoU of ground-truth boxes, computed only where it can be best: the nearest cell centre.

Shapes: ``N`` boxes, ``L`` FPN levels, ``A`` anchors per location of a level.

The anchors of a level exist only at the cell centres ``((j + 0.5) * s, (i + 0.5) * s)`` of
the grid of an image zero-padded to a multiple of the largest stride (``detector/anchors.py``,
``detector/model.py``). For a box and an anchor shape ``(aw, ah)`` at centre distance
``(dx, dy)``, IoU ``= I / (area_box + area_anchor - I)`` grows with the intersection
``I = iw * ih``, and ``iw = clip((bw + aw) / 2 - dx, 0, min(bw, aw))`` (likewise ``ih``) only
shrinks as ``dx`` grows. So for every anchor shape of a level the best anchor is the one
at the cell centre nearest to the box centre in x and, independently, in y (clamped to the
grid), and the best IoU over *all* anchors of an image is the maximum over ``L * A`` single
IoUs: ``O(N * L * A)`` instead of ``O(N * anchors per image)``. It is exact: the tests
compare it with :func:`best_iou_every_anchor`, which builds every anchor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["BoxGrid", "anchor_shapes", "best_iou_every_anchor"]


def anchor_shapes(strides: Sequence[int], scales: Sequence[float] | Sequence[Sequence[float]],
                  aspect_ratios: Sequence[float]) -> list[np.ndarray]:
    """Anchor widths and heights ``(A, 2)`` per level, exactly as the model builds them
    (:func:`detector.anchors.cell_anchors`' rule, :func:`detector.anchor_cell.cell_anchor_rows`, without
    torch; ``scales`` shared or one list per level)."""
    from detector.anchor_cell import cell_anchor_rows

    per_level = _per_level(scales, len(strides))
    shapes = []
    for stride, level_scales in zip(strides, per_level):
        xyxy = np.asarray(cell_anchor_rows(stride, level_scales, aspect_ratios), dtype=np.float64)  # (A, 4)
        shapes.append(np.stack([xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1))
    return shapes


def _per_level(scales: Sequence[float] | Sequence[Sequence[float]], num_levels: int) -> list[list[float]]:
    if len(scales) and isinstance(scales[0], Sequence):
        return [[float(s) for s in level] for level in scales]  # type: ignore[union-attr]
    return [[float(s) for s in scales]] * num_levels  # type: ignore[arg-type]


@dataclass(frozen=True)
class BoxGrid:
    """Boxes with their centre distance to the nearest anchor centre of every level.

    Attributes:
        wh: ``(N, 2)`` box widths and heights (network-input pixels).
        offsets: ``(L, N, 2)`` ``|dx|, |dy|`` from each box centre to the nearest cell centre
            of level ``l`` (the grid of the box's own padded image).
        strides: the ``L`` level strides.
    """

    wh: np.ndarray
    offsets: np.ndarray
    strides: tuple[int, ...]

    @classmethod
    def from_boxes(cls, boxes: np.ndarray, image_hw: np.ndarray, strides: Sequence[int],
                   dtype: type = np.float64) -> BoxGrid:
        """``boxes`` ``(N, 4)`` xyxy and the ``(h, w)`` ``(N, 2)`` of each box's image (after resize)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        image_hw = np.asarray(image_hw, dtype=np.float64).reshape(-1, 2)
        if len(image_hw) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(image_hw)} image sizes")
        pad = max(strides)
        padded = np.ceil(image_hw / pad) * pad  # (N, 2) h, w: the model pads like this
        centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)  # (N, 2) x, y
        cells = padded[:, ::-1]  # (N, 2) padded w, h in the order of centre
        offsets = []
        for s in strides:
            last = np.ceil(cells / s) - 1  # (N, 2) index of the last column / row
            nearest = np.clip(np.floor(centre / s), 0, last)  # the cell holding the centre is the nearest
            offsets.append(np.abs(centre - (nearest + 0.5) * s))
        wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
        return cls(wh.astype(dtype), np.stack(offsets).astype(dtype), tuple(int(s) for s in strides))

    @classmethod
    def from_images(cls, boxes_per_image: Sequence[np.ndarray], image_sizes: Sequence[tuple[int, int]],
                    strides: Sequence[int]) -> BoxGrid:
        """From per-image ``(G_i, 4)`` boxes and ``(h, w)`` sizes (as :func:`pipeline.data.anchor_fit.gt_from_coco`
        returns them); boxes are concatenated in image order."""
        boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes_per_image]
        hw = [np.repeat(np.asarray([size], dtype=np.float64), len(b), axis=0) for b, size in zip(boxes, image_sizes)]
        return cls.from_boxes(np.concatenate(boxes + [np.zeros((0, 4))]), np.concatenate(hw + [np.zeros((0, 2))]),
                              strides)

    def __len__(self) -> int:
        return len(self.wh)

    def subset(self, index: np.ndarray) -> BoxGrid:
        return BoxGrid(self.wh[index], self.offsets[:, index], self.strides)

    def astype(self, dtype: type) -> BoxGrid:
        return BoxGrid(self.wh.astype(dtype), self.offsets.astype(dtype), self.strides)

    def best_iou(self, shapes: Sequence[np.ndarray], chunk: int = 1 << 15) -> np.ndarray:
        """Best IoU ``(N,)`` of each box over every anchor of its image.

        Args:
            shapes: per level, anchor ``(w, h)`` ``(A_l, 2)`` (:func:`anchor_shapes`).
            chunk: boxes per step: the temporaries are ``(chunk, A_l)``, so that scoring the
                million boxes of a COCO-size split stays within a few MB.
        """
        if len(shapes) != len(self.strides):
            raise ValueError(f"{len(shapes)} levels of anchor shapes for {len(self.strides)} strides")
        dtype = self.wh.dtype
        shapes = [np.asarray(wh, dtype=dtype) for wh in shapes]
        best = np.zeros(len(self), dtype=dtype)
        for start in range(0, len(self), chunk):
            end = min(len(self), start + chunk)
            best[start:end] = self._best_iou(shapes, slice(start, end))
        return best

    def _best_iou(self, shapes: list[np.ndarray], rows: slice) -> np.ndarray:
        bw, bh = self.wh[rows, 0:1], self.wh[rows, 1:2]  # (n, 1)
        box_area = bw * bh
        best = np.zeros(len(bw), dtype=self.wh.dtype)
        for level, wh in enumerate(shapes):
            aw, ah = wh[None, :, 0], wh[None, :, 1]  # (1, A)
            # iw = clip(bw/2 + aw/2 - dx, 0, min(bw, aw)), in place on (n, A) buffers
            iw = self._reach[level, rows, 0:1] + aw * 0.5
            np.minimum(iw, np.minimum(bw, aw), out=iw)
            np.maximum(iw, 0, out=iw)
            ih = self._reach[level, rows, 1:2] + ah * 0.5
            np.minimum(ih, np.minimum(bh, ah), out=ih)
            np.maximum(ih, 0, out=ih)
            inter = np.multiply(iw, ih, out=iw)
            union = box_area + aw * ah
            union -= inter
            iou = np.divide(inter, union, out=inter)  # (n, A)
            np.maximum(best, iou.max(axis=1), out=best)
        return best

    @cached_property
    def _reach(self) -> np.ndarray:
        """``(L, N, 2)``: half the box size minus the offset, the box's part of ``iw``/``ih``."""
        return self.wh[None] * 0.5 - self.offsets


def log_side(wh: np.ndarray) -> np.ndarray:
    """``log(sqrt(w * h))`` per box ``(N,)``: the size the search clusters on."""
    return 0.5 * np.log(np.maximum(wh[:, 0] * wh[:, 1], 1e-12))


def log_ratio(wh: np.ndarray) -> np.ndarray:
    """``log(h / w)`` per box ``(N,)`` (the anchors' ``aspect_ratio = height / width``)."""
    return np.log(np.maximum(wh[:, 1], 1e-12) / np.maximum(wh[:, 0], 1e-12))


def best_iou_every_anchor(boxes: np.ndarray, image_hw: np.ndarray, strides: Sequence[int],
                          scales: Sequence[float] | Sequence[Sequence[float]],
                          aspect_ratios: Sequence[float]) -> np.ndarray:
    """The slow reference for :meth:`BoxGrid.best_iou`: best IoU ``(N,)`` of ``(N, 4)`` boxes with
    every anchor of every level of their padded ``(N, 2)`` images, built by the detector's own
    ``AnchorGenerator`` (float64). For tests and benchmarks."""
    import torch

    from detector.anchors import AnchorGenerator
    from detector.boxes import box_iou

    generator, pad = AnchorGenerator(strides, scales, aspect_ratios), max(strides)
    out = []
    for box, (h, w) in zip(np.asarray(boxes, dtype=np.float64), np.asarray(image_hw).tolist()):
        hp, wp = math.ceil(h / pad) * pad, math.ceil(w / pad) * pad
        shapes = [(math.ceil(hp / s), math.ceil(wp / s)) for s in strides]
        anchors = torch.cat(generator(shapes, dtype=torch.float64))
        out.append(box_iou(torch.as_tensor(box)[None], anchors).max().item())
    return np.asarray(out)

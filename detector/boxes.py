"""Pure, batch-agnostic box math on ``xyxy`` boxes.

Every function indexes with ``...`` and ``unbind(-1)``, so the same code serves
``(N, 4)`` boxes and padded batches ``(B, N, 4)``.

Shapes: ``N``, ``M`` boxes; ``...`` any leading batch dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BoxCoder", "box_area", "box_iou", "clip_boxes", "remove_small_boxes"]


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``(..., N, 4)`` xyxy boxes -> ``(..., N)``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x2 - x1) * (y2 - y1)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU: ``(..., N, 4) x (..., M, 4) -> (..., N, M)``.

    Leading dimensions broadcast. Pairs with zero union (two empty boxes) get 0.
    """
    area1 = box_area(boxes1)  # (..., N)
    area2 = box_area(boxes2)  # (..., M)
    # (..., N, 1, 2) against (..., 1, M, 2) -> (..., N, M, 2)
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (..., N, M)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


class BoxCoder:
    """Encodes boxes as ``(dx, dy, dw, dh)`` deltas relative to reference boxes.

    ``dx = wx * (gx - px) / pw``, ``dy = wy * (gy - py) / ph``,
    ``dw = ww * log(gw / pw)``, ``dh = wh * log(gh / ph)`` (the R-CNN
    parameterisation; same formula as torchvision's ``BoxCoder``).

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers (RPN ``(1, 1, 1, 1)``,
            RoI head ``(10, 10, 5, 5)`` by convention).
        scale_clamp: upper bound on ``dw``/``dh`` before ``exp`` in ``decode``.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must have 4 values, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"

    def encode(self, reference_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Deltas that turn ``reference_boxes`` into ``target_boxes``: ``(..., 4) -> (..., 4)``."""
        wx, wy, ww, wh = self.weights
        px1, py1, px2, py2 = reference_boxes.unbind(-1)
        gx1, gy1, gx2, gy2 = target_boxes.unbind(-1)
        pw, ph = px2 - px1, py2 - py1
        gw, gh = gx2 - gx1, gy2 - gy1
        dx = wx * ((gx1 + 0.5 * gw) - (px1 + 0.5 * pw)) / pw
        dy = wy * ((gy1 + 0.5 * gh) - (py1 + 0.5 * ph)) / ph
        dw = ww * torch.log(gw / pw)
        dh = wh * torch.log(gh / ph)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Apply ``(..., 4)`` deltas to ``(..., 4)`` reference boxes (broadcasting).

        Computed in (at least) float32; ``dw``/``dh`` are clamped at ``scale_clamp``.
        """
        dtype = torch.promote_types(torch.promote_types(deltas.dtype, reference_boxes.dtype), torch.float32)
        deltas = deltas.to(dtype)
        reference_boxes = reference_boxes.to(dtype)
        wx, wy, ww, wh = self.weights
        px1, py1, px2, py2 = reference_boxes.unbind(-1)
        pw, ph = px2 - px1, py2 - py1
        pcx, pcy = px1 + 0.5 * pw, py1 + 0.5 * ph
        dx, dy, dw, dh = deltas.unbind(-1)
        dw = (dw / ww).clamp(max=self.scale_clamp)
        dh = (dh / wh).clamp(max=self.scale_clamp)
        cx = dx / wx * pw + pcx
        cy = dy / wy * ph + pcy
        half_w = 0.5 * torch.exp(dw) * pw
        half_h = 0.5 * torch.exp(dh) * ph
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int] | Sequence[int] | Tensor) -> Tensor:
    """Clip ``(..., N, 4)`` boxes to ``[0, w] x [0, h]``.

    Args:
        boxes: ``(..., N, 4)`` xyxy boxes.
        image_size: one ``(height, width)`` for all boxes, or a tensor of
            per-image sizes ``(..., 2)`` matching the leading dims of ``boxes``
            (e.g. ``(B, 2)`` for ``(B, N, 4)`` boxes).
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    if isinstance(image_size, Tensor):
        size = image_size.to(device=boxes.device, dtype=boxes.dtype)
        h, w = size[..., 0, None], size[..., 1, None]  # (..., 1) broadcast over N
        zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
        x1 = torch.minimum(torch.maximum(x1, zero), w)
        x2 = torch.minimum(torch.maximum(x2, zero), w)
        y1 = torch.minimum(torch.maximum(y1, zero), h)
        y2 = torch.minimum(torch.maximum(y2, zero), h)
    else:
        h, w = float(image_size[0]), float(image_size[1])
        x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
        y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Keep mask ``(..., N)`` of boxes whose width and height are both ``>= min_size``.

    Same criterion as ``torchvision.ops.remove_small_boxes`` (which returns indices
    for ``(N, 4)``; ``mask.nonzero().squeeze(1)`` gives those).
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    return ((x2 - x1) >= min_size) & ((y2 - y1) >= min_size)

"""IoU matching of predictions (anchors or proposals) to ground truth, batched.

Shapes: ``B`` images, ``N`` anchors/proposals per image, ``G`` ground-truth
boxes per image (padded; a validity mask says which are real).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.boxes import box_iou

__all__ = ["Matcher"]

IGNORE, BACKGROUND, FOREGROUND = -1, 0, 1


class Matcher:
    """Assigns each prediction the ground-truth box it overlaps most.

    Labels: ``1`` foreground if IoU ``>= high``, ``0`` background if IoU ``< low``,
    ``-1`` ignored in between. With ``allow_low_quality_matches`` each ground-truth
    box also claims (as foreground) the predictions with which it has its highest
    IoU, ties included, so that small or oddly shaped objects still get a positive
    (Faster R-CNN's second rule; the seed lacks it). Unlike torchvision, a box
    whose best IoU is 0 claims nothing.

    Args:
        high: foreground threshold.
        low: background threshold (``low <= high``; ``low == high`` means no ignore band).
        allow_low_quality_matches: see above.
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False) -> None:
        if low > high:
            raise ValueError(f"Matcher: low ({low}) must be <= high ({high})")
        self.high = float(high)
        self.low = float(low)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"Matcher(high={self.high}, low={self.low}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(
        self, boxes: Tensor, gt_boxes: Tensor, gt_valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Match ``boxes`` ``(B, N, 4)`` (or shared ``(N, 4)``) to ``gt_boxes`` ``(B, G, 4)``.

        Args:
            gt_valid: ``(B, G)`` bool mask of real ground-truth boxes (default: all).

        Returns:
            matched_idx: ``(B, N)`` int64 index into ``G`` (0 where nothing matched).
            labels: ``(B, N)`` int8 in ``{-1, 0, 1}``.
        """
        iou = box_iou(boxes, gt_boxes)  # (B, N, G)
        return self.match_iou(iou, gt_valid)

    def match_iou(self, iou: Tensor, gt_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Same as ``__call__`` from a precomputed ``(B, N, G)`` IoU tensor."""
        B, N, G = iou.shape
        if G == 0:
            zeros = torch.zeros(B, N, dtype=torch.int64, device=iou.device)
            return zeros, zeros.to(torch.int8)
        if gt_valid is not None:
            # padded boxes can never win: IoU -1 is below every threshold
            iou = iou.masked_fill(~gt_valid[:, None, :], -1.0)
        quality, matched_idx = iou.max(dim=2)  # (B, N)
        labels = torch.full_like(matched_idx, IGNORE, dtype=torch.int8)
        labels[quality < self.low] = BACKGROUND
        labels[quality >= self.high] = FOREGROUND
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values  # (B, 1, G); padded GT: -1
            claimed = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=2)  # (B, N)
            labels[claimed] = FOREGROUND
        return matched_idx, labels

"""IoU matching of predictions (anchors or proposals) to ground truth, batched.

Shapes: ``B`` images, ``N`` anchors/proposals per image, ``G`` ground-truth
boxes per image (padded; a validity mask says which are real).

Memory: the ``(B, N, G)`` IoU (and ``box_iou``'s temporaries) is built for chunks of at
most ``max_chunk_elements`` entries; at COCO size (~270k anchors, 100 boxes, 2 images)
the whole tensor would be ~210 MB per temporary. Low-quality matches then need a second
pass over the chunks (each box's best IoU is known only after the first).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.boxes import box_iou
from detector.structures import BACKGROUND, FOREGROUND, IGNORE

__all__ = ["Matcher"]


class Matcher:
    """Assigns each prediction the ground-truth box it overlaps most.

    Labels: ``FOREGROUND`` if IoU ``>= high``, ``BACKGROUND`` if IoU ``< low``,
    ``IGNORE`` in between. With ``allow_low_quality_matches`` each ground-truth
    box also claims (as foreground) the predictions with which it has its highest
    IoU, ties included, so that small or oddly shaped objects still get a positive
    (Faster R-CNN's second rule, as torchvision's ``Matcher``). Unlike torchvision,
    a box whose best IoU is 0 claims nothing.

    Args:
        high: foreground threshold.
        low: background threshold (``low <= high``; ``low == high`` means no ignore band).
        allow_low_quality_matches: see above.
        max_chunk_elements: bound on ``B * n * G`` of one IoU chunk of ``n`` predictions.
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False,
                 max_chunk_elements: int = 1 << 22) -> None:
        if low > high:
            raise ValueError(f"Matcher: low ({low}) must be <= high ({high})")
        self.high = float(high)
        self.low = float(low)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.max_chunk_elements = int(max_chunk_elements)

    def __repr__(self) -> str:
        return (
            f"Matcher(high={self.high}, low={self.low}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    @torch.no_grad()
    def __call__(
        self, boxes: Tensor, gt_boxes: Tensor, gt_valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Match ``boxes`` ``(B, N, 4)`` (or shared ``(N, 4)``) to ``gt_boxes`` ``(B, G, 4)``.

        Args:
            gt_valid: ``(B, G)`` bool mask of real ground-truth boxes (default: all).

        Returns:
            matched_idx: ``(B, N)`` int64 index into ``G`` (0 where nothing matched).
            labels: ``(B, N)`` int8 in ``{IGNORE, BACKGROUND, FOREGROUND}``.
        """
        B, G = gt_boxes.shape[:2]
        N = boxes.shape[-2]
        if G == 0:
            zeros = torch.zeros(B, N, dtype=torch.int64, device=gt_boxes.device)
            return zeros, zeros.to(torch.int8)
        step = max(1, self.max_chunk_elements // (B * G))
        chunks = [(s, min(s + step, N)) for s in range(0, N, step)]

        def iou(s: int, e: int) -> Tensor:  # (B, e - s, G); padded GT get -1, below every threshold
            out = box_iou(boxes[..., s:e, :], gt_boxes)
            return out if gt_valid is None else out.masked_fill(~gt_valid[:, None, :], -1.0)

        quality = gt_boxes.new_empty(B, N)
        matched_idx = torch.empty(B, N, dtype=torch.int64, device=gt_boxes.device)
        best_per_gt = gt_boxes.new_full((B, G), -1.0)
        for s, e in chunks:
            chunk = iou(s, e)
            quality[:, s:e], matched_idx[:, s:e] = chunk.max(dim=2)
            best_per_gt = torch.maximum(best_per_gt, chunk.max(dim=1).values)
        labels = torch.where(
            quality >= self.high,
            FOREGROUND,
            torch.where(quality < self.low, BACKGROUND, IGNORE),
        ).to(torch.int8)  # (B, N)
        if self.allow_low_quality_matches:
            claimable = (best_per_gt > 0)[:, None, :]  # (B, 1, G); padded GT: best -1
            for s, e in chunks:
                chunk = iou(s, e) if len(chunks) > 1 else chunk
                claimed = ((chunk == best_per_gt[:, None, :]) & claimable).any(dim=2)  # (B, e - s)
                labels[:, s:e] = torch.where(claimed, FOREGROUND, labels[:, s:e])
        return matched_idx, labels

"""Data structures shared by the RPN and the RoI heads.

Shapes: ``B`` images, ``G`` ground-truth boxes per image (padded), ``H, W`` the padded
batch size in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["BACKGROUND", "FOREGROUND", "IGNORE", "ImageBatch", "Targets"]

# Labels of matched anchors/proposals (matching.py, sampling.py, rpn.py, roi_heads.py).
IGNORE, BACKGROUND, FOREGROUND = -1, 0, 1


@dataclass
class ImageBatch:
    """Normalised images zero-padded into one tensor (detectron2's ``ImageList``).

    Attributes:
        tensor: ``(B, 3, H, W)`` channels-last; ``H``, ``W`` are multiples of the largest stride.
        image_sizes: ``(B, 2)`` int64 true ``(h, w)`` of each image (boxes are clipped to it).
        padded_sizes: ``(B, 2)`` int64 each image's own size rounded up to the largest stride,
            when the batch mixes sizes (anchors beyond it are ignored); ``None`` when every
            image has the batch's padded size.
    """

    tensor: Tensor
    image_sizes: Tensor
    padded_sizes: Tensor | None = None

    def __len__(self) -> int:
        return self.tensor.shape[0]


@dataclass
class Targets:
    """Padded ground truth of a batch.

    Attributes:
        boxes: ``(B, G, 4)`` float32 xyxy (padding rows are zeros).
        labels: ``(B, G)`` int64 class labels in ``1..C`` (0 on padding).
        valid: ``(B, G)`` bool, which rows are real boxes.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor

    def at_least_one(self) -> Targets:
        """The same targets with ``G >= 1`` (one invalid padding row when there were none),
        so that fixed-shape gathers by matched index always have a row to read."""
        if self.boxes.shape[1] > 0:
            return self
        B = self.boxes.shape[0]
        return Targets(self.boxes.new_zeros(B, 1, 4), self.labels.new_zeros(B, 1), self.valid.new_zeros(B, 1))

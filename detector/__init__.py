"""Faster R-CNN with FPN: a small, fast, batched implementation on torchvision ops."""

from detector.anchors import AnchorGenerator
from detector.boxes import BoxCoder, box_area, box_iou, clip_boxes, remove_small_boxes

__all__ = [
    "AnchorGenerator",
    "BoxCoder",
    "box_area",
    "box_iou",
    "clip_boxes",
    "remove_small_boxes",
]

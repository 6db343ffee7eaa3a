"""Faster R-CNN with FPN: a small, fast, batched implementation on torchvision ops.

Public API::

    config = DetectorConfig.from_dict(params["model"], num_classes=3)
    model = build_model(config)
    losses = model(images, targets)          # train mode
    detections = model.eval()(images)        # eval mode
    save_checkpoint("models/model.pt", model); model = load_checkpoint("models/model.pt")
"""

from detector.anchors import AnchorGenerator
from detector.boxes import BoxCoder, box_area, box_iou, clip_boxes, remove_small_boxes
from detector.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from detector.config import AnchorConfig, DetectorConfig, RoIConfig, RPNConfig
from detector.matching import Matcher
from detector.model import FasterRCNN, build_model
from detector.sampling import sample_balanced

__all__ = [
    "AnchorConfig",
    "AnchorGenerator",
    "BoxCoder",
    "DetectorConfig",
    "FasterRCNN",
    "Matcher",
    "RPNConfig",
    "RoIConfig",
    "box_area",
    "box_iou",
    "build_model",
    "clip_boxes",
    "load_checkpoint",
    "read_checkpoint",
    "remove_small_boxes",
    "sample_balanced",
    "save_checkpoint",
]

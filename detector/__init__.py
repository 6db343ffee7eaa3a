"""Faster R-CNN with FPN: a small, fast, batched implementation on torchvision ops.

Public API::

    config = DetectorConfig.from_dict(params["model"], num_classes=3)
    model = build_model(config)
    losses = model(images, targets)          # train mode
    detections = model.eval()(images)        # eval mode
    save_checkpoint("models/model.pt", model); model = load_checkpoint("models/model.pt")
"""

from typing import TYPE_CHECKING, Any

# Lazy exports (PEP 562): ``import detector`` and its torch-free submodules (``detector.typed``,
# ``detector.config``) do not import torch (~0.7 GB of RSS), so that parsing params.yaml in the data
# stage stays light; the first use of a name below imports its module.
_EXPORTS = {
    "AnchorGenerator": "detector.anchors",
    "BoxCoder": "detector.boxes", "box_area": "detector.boxes", "box_iou": "detector.boxes",
    "clip_boxes": "detector.boxes", "remove_small_boxes": "detector.boxes",
    "load_checkpoint": "detector.checkpoint", "read_checkpoint": "detector.checkpoint",
    "save_checkpoint": "detector.checkpoint",
    "AnchorConfig": "detector.config", "DetectorConfig": "detector.config", "RoIConfig": "detector.config",
    "RPNConfig": "detector.config",
    "Matcher": "detector.matching",
    "FasterRCNN": "detector.model", "build_model": "detector.model",
    "sample_balanced": "detector.sampling",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    # the lazy imports are statements (not importlib calls) so that the run identity's import graph,
    # pipeline.driver.identity.code_files, sees them; only the module of ``name`` is imported
    if module == "detector.config":
        from detector import config as found
    elif module == "detector.anchors":
        from detector import anchors as found
    elif module == "detector.boxes":
        from detector import boxes as found
    elif module == "detector.checkpoint":
        from detector import checkpoint as found
    elif module == "detector.matching":
        from detector import matching as found
    elif module == "detector.model":
        from detector import model as found
    elif module == "detector.sampling":
        from detector import sampling as found
    else:
        raise AttributeError(f"module 'detector' has no attribute {name!r}")
    value = getattr(found, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

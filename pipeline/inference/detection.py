"""Detections for a batch of PIL images: resize like training, detect, map boxes back to original pixels.

Shapes: ``N`` detections of one image; boxes are ``(N, 4)`` xyxy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor, nn


def rescale_boxes(boxes: Tensor, from_hw: Sequence[int], to_hw: Sequence[int]) -> Tensor:
    """Map ``(..., 4)`` xyxy boxes from an image of size ``from_hw`` to the same image at ``to_hw``."""
    (fh, fw), (th, tw) = (int(v) for v in from_hw), (int(v) for v in to_hw)
    scale = boxes.new_tensor([tw / fw, th / fh, tw / fw, th / fh])
    return boxes * scale


def detect(model: nn.Module, images: Sequence[Image.Image], *, transforms: Callable,
           device: str | torch.device = "cpu") -> list[dict[str, Tensor]]:
    """The detections of ``model`` (in eval mode, on ``device``) for a batch of RGB images.

    Each image goes through ``transforms`` (the evaluation resize) as in training; the boxes
    come back in that image's original pixels.

    Returns:
        Per image ``{"boxes": (N, 4) xyxy float32, "scores": (N,), "labels": (N,) 1..C}`` on the CPU.
    """
    tensors = [transforms(image, {"boxes": torch.zeros(0, 4)})[0].to(device) for image in images]
    with torch.inference_mode():
        outputs = model(tensors)
    out = []
    for image, tensor, output in zip(images, tensors, outputs):
        boxes = rescale_boxes(output["boxes"].float().cpu(), tensor.shape[-2:], (image.height, image.width))
        out.append({"boxes": boxes, "scores": output["scores"].float().cpu(), "labels": output["labels"].cpu()})
    return out

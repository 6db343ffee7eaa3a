"""The training recipe and the evaluation resize, on ``torchvision.transforms.v2``.

Each pipeline is called as ``image, target = t(image, target)`` where ``image`` is a PIL
image or a ``(3, H, W)`` tensor (uint8, or float in ``[0, 1]``) and ``target["boxes"]`` is
``(G, 4)`` xyxy in that image's pixels. The boxes travel through v2 as a
``tv_tensors.BoundingBoxes`` with the image's canvas size, so every geometric transform moves
them with the pixels; the result is a float32 ``(3, h, w)`` tensor in ``[0, 1]`` and the
target of :mod:`pipeline.data.dataset` (``boxes`` a plain float32 ``(G', 4)`` tensor,
``size == (h, w)``) plus ``degenerate_boxes``: how many boxes the recipe removed because a
crop, zoom or resize left them under 1 pixel wide or tall (their ``labels`` and ``iscrowd``
are removed with them, by ``SanitizeBoundingBoxes``).

Order of the training recipe (as torchvision's detection references): zoom-out, IoU crop,
resize with scale jitter, flips, then the float conversion and the photometric distortion
(cheaper on the resized image). Randomness comes from torch's global RNG, so
``torch.manual_seed`` and DataLoader worker seeding make augmentation reproducible.
Evaluation is the deterministic resize alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.data.resize import resized_size

Target = dict[str, Any]
PER_BOX_FIELDS = ("labels", "iscrowd")  # (G,) tensors that must stay aligned with target["boxes"]


@dataclass(frozen=True)
class Augment:
    """The training recipe's knobs (``train.augment`` in params.yaml; validated there).

    ``scale_jitter`` multiplies both resize limits by a factor drawn uniformly from
    ``[lo, hi]`` (multi-scale training; ``[1, 1]``: the fixed resize)."""

    scale_jitter: tuple[float, float] = (1.0, 1.0)
    iou_crop_prob: float = 0.0
    zoom_out_prob: float = 0.0
    zoom_out_max: float = 2.0
    photometric_prob: float = 0.0
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0


class ResizeJitter(v2.Transform):
    """Resize by :func:`resized_size` with both limits scaled by a factor drawn from
    ``scale_range`` (``(1, 1)``: deterministic); images, boxes and masks move together."""

    def __init__(self, min_size: int, max_size: int, scale_range: Sequence[float] = (1.0, 1.0)) -> None:
        super().__init__()
        lo, hi = (float(s) for s in scale_range)
        if min_size <= 0 or max_size < min_size:
            raise ValueError(f"Resize needs 0 < min_size <= max_size, got {min_size}, {max_size}")
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range needs 0 < lo <= hi, got {list(scale_range)}")
        self.min_size, self.max_size, self.scale_range = min_size, max_size, (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        scale = lo if lo == hi else lo + (hi - lo) * torch.rand(()).item()
        return {"size": list(resized_size(h, w, self.min_size * scale, self.max_size * scale))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class IoUCropWithBoxes(v2.RandomIoUCrop):
    """``RandomIoUCrop`` (SSD's crop: a patch whose IoU with some box reaches a sampled minimum;
    boxes whose centre leaves it are zeroed for ``SanitizeBoundingBoxes``) that leaves an image
    with no boxes as it is, where v2's would search forever."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = next((x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)), None)
        if boxes is None or boxes.shape[0] == 0:
            return {}
        return super().make_params(flat_inputs)


def per_box_fields(inputs: Any) -> tuple[Tensor, ...] | None:
    """``SanitizeBoundingBoxes``' ``labels_getter``: the target's ``(G,)`` tensors of
    :data:`PER_BOX_FIELDS`, dropped with their boxes (a module function: picklable)."""
    target = inputs[1] if isinstance(inputs, (tuple, list)) and len(inputs) > 1 else {}
    fields = tuple(target[k] for k in PER_BOX_FIELDS if isinstance(target, dict) and k in target)
    return fields or None


class DetectionTransform:
    """Run v2 ``transforms`` on ``(image, target)`` and return the dataset's target contract
    (see the module docstring); ``degenerate_boxes`` adds to any count already in the target."""

    def __init__(self, geometric: Sequence[v2.Transform], photometric: Sequence[v2.Transform] = ()) -> None:
        self.transforms = [*geometric, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), *photometric]
        self.pipeline = v2.Compose(self.transforms)

    def __call__(self, image: Image.Image | Tensor, target: Target) -> tuple[Tensor, Target]:
        if isinstance(image, Tensor) and not isinstance(image, tv_tensors.Image):
            image = tv_tensors.Image(image)
        canvas = (image.height, image.width) if isinstance(image, Image.Image) else tuple(image.shape[-2:])
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)  # (G, 4) xyxy
        sample = dict(target, boxes=tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas))
        out_image, out = self.pipeline(image, sample)
        out = dict(out)
        out["boxes"] = out["boxes"].as_subclass(Tensor).to(torch.float32)  # (G', 4), G' <= G
        out["size"] = (int(out_image.shape[-2]), int(out_image.shape[-1]))
        out["degenerate_boxes"] = int(target.get("degenerate_boxes", 0)) + len(boxes) - len(out["boxes"])
        return out_image.as_subclass(Tensor), out

    def __repr__(self) -> str:
        return f"DetectionTransform({self.transforms})"


def build_transforms(train: bool, min_size: int, max_size: int, augment: Augment | None = None) -> DetectionTransform:
    """The training recipe (``augment``; default: resize and a horizontal flip) or, with
    ``train=False``, the evaluation pipeline: the deterministic resize only."""
    if not train:
        return DetectionTransform([ResizeJitter(min_size, max_size)])
    a = augment if augment is not None else Augment()
    steps: list[v2.Transform] = []
    if a.zoom_out_prob > 0:  # fill 0: black canvas, like the padding the model adds
        steps.append(v2.RandomZoomOut(fill=0, side_range=(1.0, a.zoom_out_max), p=a.zoom_out_prob))
    if a.iou_crop_prob > 0:
        steps.append(v2.RandomApply([IoUCropWithBoxes()], p=a.iou_crop_prob))
    steps.append(ResizeJitter(min_size, max_size, a.scale_jitter))
    if a.hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(a.hflip_prob))
    if a.vflip_prob > 0:
        steps.append(v2.RandomVerticalFlip(a.vflip_prob))
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=per_box_fields))
    # each of brightness, contrast, saturation, hue and channel order changed with probability p,
    # on the float (3, h, w) image
    photometric = [v2.RandomPhotometricDistort(p=a.photometric_prob)] if a.photometric_prob > 0 else []
    return DetectionTransform(steps, photometric)


def to_tensor(image: Image.Image | Tensor) -> Tensor:
    """A PIL image or ``(3, H, W)`` tensor (uint8 or float) -> float32 ``(3, H, W)`` in ``[0, 1]``."""
    return F.to_dtype(F.to_image(image), torch.float32, scale=True).as_subclass(Tensor)

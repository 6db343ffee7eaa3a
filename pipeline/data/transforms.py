"""Detection transforms that keep boxes consistent with pixels.

Each transform is called as ``image, target = t(image, target)`` where ``image`` is a PIL
image or a float tensor ``(3, H, W)`` in ``[0, 1]`` and ``target["boxes"]`` is ``(G, 4)``
xyxy in that image's pixels; ``target["size"]`` is kept up to date as ``(h, w)``.
Randomness comes from torch's global RNG, so ``torch.manual_seed`` and DataLoader worker
seeding make augmentation reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

Target = dict[str, Any]
Transform = Callable[[Any, Target], tuple[Any, Target]]


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(h, w)`` after scaling the shorter side to ``min_size`` unless the longer side would
    exceed ``max_size`` (then the longer side becomes ``max_size``); aspect ratio kept."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _size(image: Image.Image | Tensor) -> tuple[int, int]:
    if isinstance(image, Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    return image.height, image.width


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class Resize:
    """Shorter side to ``min_size`` unless the longer side would exceed ``max_size``; boxes scaled."""

    def __init__(self, min_size: int, max_size: int) -> None:
        if min_size <= 0 or max_size < min_size:
            raise ValueError(f"Resize needs 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Image.Image | Tensor, target: Target) -> tuple[Any, Target]:
        h, w = _size(image)
        new_h, new_w = resized_size(h, w, self.min_size, self.max_size)
        if (new_h, new_w) != (h, w):
            if isinstance(image, Tensor):
                image = torch.nn.functional.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                                                        align_corners=False, antialias=True)[0]
            else:
                image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
            target = dict(target)
            scale = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], dtype=torch.float32)
            target["boxes"] = target["boxes"] * scale  # (G, 4) xyxy
        target["size"] = (new_h, new_w)
        return image, target

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_size}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the image and its boxes with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Image.Image | Tensor, target: Target) -> tuple[Any, Target]:
        if torch.rand(()).item() >= self.p:
            return image, target
        return hflip(image, target)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def hflip(image: Image.Image | Tensor, target: Target) -> tuple[Any, Target]:
    """Mirror left-right: ``x0' = W - x1``, ``x1' = W - x0``."""
    _, w = _size(image)
    if isinstance(image, Tensor):
        image = image.flip(-1)
    else:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = torch.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), dim=-1)
    return image, target


class ColorJitter:
    """Light random brightness, contrast and saturation changes, each by a factor in
    ``[1 - strength, 1 + strength]``; works on the tensor (converts a PIL image)."""

    def __init__(self, strength: float = 0.2) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"ColorJitter strength must be in [0, 1), got {strength}")
        self.strength = strength

    def __call__(self, image: Image.Image | Tensor, target: Target) -> tuple[Tensor, Target]:
        if not isinstance(image, Tensor):
            image, target = ToTensor()(image, target)
        if self.strength == 0:
            return image, target
        brightness, contrast, saturation = (1.0 + (torch.rand(3) * 2 - 1) * self.strength).tolist()
        # numpy on purpose: tiny per-image ops gain nothing from torch's intra-op threads,
        # which are badly slowed down by oversubscription in the main process
        x = image.numpy() * np.float32(brightness)  # (3, H, W)
        mean = x.mean()
        x = (x - mean) * np.float32(contrast) + mean
        gray = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]  # (H, W)
        x = (x - gray) * np.float32(saturation) + gray
        return torch.from_numpy(np.clip(x, 0.0, 1.0, out=x)), target

    def __repr__(self) -> str:
        return f"ColorJitter(strength={self.strength})"


class ToTensor:
    """PIL image -> float32 tensor ``(3, H, W)`` in ``[0, 1]``; tensors pass through."""

    def __call__(self, image: Image.Image | Tensor, target: Target) -> tuple[Tensor, Target]:
        if isinstance(image, Tensor):
            return image, target
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
        pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1)) / np.float32(255.0)  # -> (3, H, W)
        return torch.from_numpy(pixels), target

    def __repr__(self) -> str:
        return "ToTensor()"


def build_transforms(train: bool, min_size: int, max_size: int, hflip_prob: float = 0.5,
                     color_jitter: float = 0.0) -> Compose:
    """The training (resize, flip, jitter) or evaluation (resize only) pipeline."""
    transforms: list[Transform] = [Resize(min_size, max_size)]
    if train and hflip_prob > 0:
        transforms.append(RandomHorizontalFlip(hflip_prob))
    transforms.append(ToTensor())
    if train and color_jitter > 0:
        transforms.append(ColorJitter(color_jitter))
    return Compose(transforms)

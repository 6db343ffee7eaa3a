"""Transforms keep boxes consistent with pixels (pipeline/data/transforms.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.transforms import (
    ColorJitter,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    build_transforms,
    hflip,
    resized_size,
)


def _sample(w=40, h=20):
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[5:10, 2:8] = 255  # a white block at x 2..8, y 5..10
    target = {"boxes": torch.tensor([[2.0, 5.0, 8.0, 10.0]]), "labels": torch.tensor([1]), "size": (h, w)}
    return Image.fromarray(pixels), target


def _box_of_white(image):
    t = image if isinstance(image, torch.Tensor) else ToTensor()(image, {})[0]
    ys, xs = torch.nonzero(t[0] > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_flip_moves_boxes_with_pixels_and_twice_is_identity(as_tensor):
    image, target = _sample()
    if as_tensor:
        image, target = ToTensor()(image, target)
    flipped, t1 = hflip(image, target)
    assert t1["boxes"].tolist() == [[32.0, 5.0, 38.0, 10.0]]
    assert _box_of_white(flipped) == [32, 5, 38, 10]
    back, t2 = hflip(flipped, t1)
    assert torch.equal(t2["boxes"], target["boxes"])
    assert np.array_equal(np.asarray(back), np.asarray(image)) if not as_tensor else torch.equal(back, image)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_resize_scales_boxes_and_keeps_aspect(as_tensor):
    image, target = _sample(40, 20)
    if as_tensor:
        image, target = ToTensor()(image, target)
    out, t = Resize(40, 60)(image, target)
    assert t["size"] == (30, 60)  # shorter side 20 -> 40 would make the longer 80 > 60
    assert t["boxes"].tolist() == [[3.0, 7.5, 12.0, 15.0]]
    assert tuple(ToTensor()(out, {})[0].shape[-2:]) == (30, 60)


def test_resized_size_rule():
    assert resized_size(480, 640, 800, 1333) == (800, 1067)
    assert resized_size(100, 1000, 800, 1333) == (133, 1333)
    assert resized_size(256, 256, 256, 256) == (256, 256)


def test_random_transforms_follow_torch_seed_and_keep_range():
    transforms = build_transforms(train=True, min_size=20, max_size=40, hflip_prob=0.5, color_jitter=0.3)
    image, target = _sample()
    torch.manual_seed(0)
    a = [transforms(image, target) for _ in range(6)]
    torch.manual_seed(0)
    b = [transforms(image, target) for _ in range(6)]
    for (ia, ta), (ib, tb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
        assert ia.dtype == torch.float32 and 0.0 <= ia.min() and ia.max() <= 1.0
    flips = {tuple(t["boxes"][0].tolist()) for _, t in a}
    assert len(flips) == 2  # both outcomes seen with p = 0.5


def test_eval_transforms_are_deterministic_resize_only():
    transforms = build_transforms(train=False, min_size=10, max_size=100)
    assert [type(t).__name__ for t in transforms.transforms] == ["Resize", "ToTensor"]
    assert RandomHorizontalFlip(0.0)(*_sample())[1]["boxes"].tolist() == [[2.0, 5.0, 8.0, 10.0]]
    with pytest.raises(ValueError):
        ColorJitter(1.5)

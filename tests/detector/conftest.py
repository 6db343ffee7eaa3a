"""Shared fixtures and helpers for the detector tests."""

import pytest
import torch


def random_boxes(
    n: int, size: float = 100.0, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(n, 4)`` valid xyxy boxes inside ``[0, size]``."""
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * size * 0.8
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * size * 0.4 + 1.0
    return torch.cat([xy, xy + wh], dim=-1)


@pytest.fixture
def make_boxes():
    """The ``random_boxes`` helper (test modules are not importable packages)."""
    return random_boxes


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _few_threads():
    # the CI box has 2 cores shared with other suites
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_config(**overrides):
    """A small, fast configuration for end-to-end tests on CPU."""
    from detector.config import DetectorConfig

    d = {
        "backbone": "regnet_x_400mf",
        "fpn_channels": 32,
        "anchors": {"scales": [4]},
        "rpn": {
            "batch_size_per_image": 64,
            "pre_nms_topk_train": 300,
            "post_nms_topk_train": 100,
            "pre_nms_topk_test": 300,
            "post_nms_topk_test": 100,
        },
        "roi": {"batch_size_per_image": 64, "head_dim": 64},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            d.setdefault(key, {}).update(value)
        else:
            d[key] = value
    return DetectorConfig.from_dict(d, num_classes=2, class_names=["square", "bar"])


@pytest.fixture
def tiny():
    return tiny_config


def toy_batch(generator: torch.Generator | None = None):
    """Two 128x128 images with bright class-coloured rectangles and their targets."""
    imgs = torch.rand(2, 3, 128, 128, generator=generator) * 0.2
    boxes = [torch.tensor([[10.0, 20, 60, 70], [70, 60, 120, 110]]), torch.tensor([[30.0, 30, 100, 90]])]
    labels = [torch.tensor([1, 2]), torch.tensor([2])]
    for k in range(2):
        for b, lab in zip(boxes[k], labels[k]):
            x1, y1, x2, y2 = b.int().tolist()
            imgs[k, lab - 1, y1:y2, x1:x2] = 0.9
    return imgs, [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]


@pytest.fixture
def toy():
    return toy_batch

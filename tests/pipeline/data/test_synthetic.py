"""The synthetic dataset generator (pipeline/data/synthetic.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.synthetic import MAX_COVERED, SHAPES, SyntheticConfig, generate_split

SMALL = SyntheticConfig(image_size=96, min_object_size=8, max_object_size=48)


def _pixels(png):
    return np.asarray(Image.open(io.BytesIO(png)))


def _boxes(split, row):
    """``[(xywh, label), ...]`` of image ``row``, in drawing order."""
    b = split.boxes
    return [(xywh, label) for xywh, label in zip(b.xywh[b.image == row].tolist(), b.labels[b.image == row].tolist())]


def test_same_seed_same_bytes_different_seed_different():
    a = generate_split("train", 4, 7, SMALL)
    b = generate_split("train", 4, 7, SMALL)
    c = generate_split("train", 4, 8, SMALL)
    assert a.images.pixels == b.images.pixels
    assert [_boxes(a, i) for i in range(4)] == [_boxes(b, i) for i in range(4)]
    assert all(not np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a.images.pixels, c.images.pixels))
    assert generate_split("val", 1, 7, SMALL).images.pixels[0] != a.images.pixels[0]  # splits differ


def test_objects_respect_size_ratio_and_occlusion_limits():
    config = SyntheticConfig(image_size=128, min_objects=3, max_objects=6, min_object_size=10, max_object_size=64)
    split = generate_split("train", 30, 0, config)
    assert split.class_names == list(SHAPES)
    assert len(split.boxes) >= 30 * 3 * 0.9 and set(split.boxes.labels.tolist()) == set(range(1, 6))
    ratios = []
    for row, png in enumerate(split.images.pixels):
        assert _pixels(png).shape == (128, 128, 3)
        objects = _boxes(split, row)
        for i, ((x, y, w, h), _) in enumerate(objects):
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            assert min(w, h) >= 10 and max(w, h) <= 64
            ratios.append(h / w)
            covered = np.zeros((int(h), int(w)), bool)  # by later (drawn on top) objects
            for (lx, ly, lw, lh), _ in objects[i + 1:]:
                covered[int(max(ly - y, 0)):int(max(min(ly + lh - y, h), 0)),
                        int(max(lx - x, 0)):int(max(min(lx + lw - x, w), 0))] = True
            assert covered.mean() <= MAX_COVERED
    assert min(ratios) < 0.4 and max(ratios) > 2.5 and max(ratios) <= 4.2 and min(ratios) >= 1 / 4.2


def test_tall_wide_only_and_class_subset():
    config = SyntheticConfig(image_size=128, min_object_size=10, max_object_size=64, tall_wide_only=True,
                             class_names=("ring", "cross"))
    split = generate_split("train", 10, 0, config)
    assert split.class_names == ["ring", "cross"]
    for (_, _, w, h), label in zip(split.boxes.xywh.tolist(), split.boxes.labels.tolist()):
        assert max(w, h) / min(w, h) >= 2.7
        assert label in (1, 2)
    with pytest.raises(ValueError, match="data.classes: synthetic classes must be a non-empty subset"):
        generate_split("train", 1, 0, SyntheticConfig(class_names=("ellipse", "zebra")))

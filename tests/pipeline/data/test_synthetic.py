"""The synthetic dataset generator (pipeline/data/synthetic.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.synthetic import MAX_COVERED, SHAPES, SyntheticConfig, generate_split

SMALL = SyntheticConfig(image_size=96, min_object_size=8, max_object_size=48)


def _pixels(record):
    return np.asarray(Image.open(io.BytesIO(record.pixels)))


def test_same_seed_same_bytes_different_seed_different():
    a = generate_split("train", 4, 7, SMALL)
    b = generate_split("train", 4, 7, SMALL)
    c = generate_split("train", 4, 8, SMALL)
    assert [r.pixels for r in a.images] == [r.pixels for r in b.images]
    assert [[(x.bbox, x.label) for x in r.boxes] for r in a.images] == \
           [[(x.bbox, x.label) for x in r.boxes] for r in b.images]
    assert all(not np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a.images, c.images))
    assert generate_split("val", 1, 7, SMALL).images[0].pixels != a.images[0].pixels  # splits differ


def test_objects_respect_size_ratio_and_occlusion_limits():
    config = SyntheticConfig(image_size=128, min_objects=3, max_objects=6, min_object_size=10, max_object_size=64)
    split = generate_split("train", 30, 0, config)
    assert split.class_names == list(SHAPES)
    boxes = [b for r in split.images for b in r.boxes]
    assert len(boxes) >= 30 * 3 * 0.9 and {b.label for b in boxes} == set(range(1, 6))
    ratios = []
    for record in split.images:
        assert _pixels(record).shape == (128, 128, 3)
        for i, box in enumerate(record.boxes):
            x, y, w, h = box.bbox
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            assert min(w, h) >= 10 and max(w, h) <= 64
            ratios.append(h / w)
            covered = np.zeros((int(h), int(w)), bool)  # by later (drawn on top) objects
            for later in record.boxes[i + 1:]:
                lx, ly, lw, lh = later.bbox
                covered[int(max(ly - y, 0)):int(max(min(ly + lh - y, h), 0)),
                        int(max(lx - x, 0)):int(max(min(lx + lw - x, w), 0))] = True
            assert covered.mean() <= MAX_COVERED
    assert min(ratios) < 0.4 and max(ratios) > 2.5 and max(ratios) <= 4.2 and min(ratios) >= 1 / 4.2


def test_tall_wide_only_and_class_subset():
    config = SyntheticConfig(image_size=128, min_object_size=10, max_object_size=64, tall_wide_only=True,
                             class_names=("ring", "cross"))
    split = generate_split("train", 10, 0, config)
    assert split.class_names == ["ring", "cross"]
    for box in (b for r in split.images for b in r.boxes):
        w, h = box.bbox[2:]
        assert max(w, h) / min(w, h) >= 2.7
        assert box.label in (1, 2)
    with pytest.raises(ValueError, match="data.classes: synthetic classes must be a non-empty subset"):
        generate_split("train", 1, 0, SyntheticConfig(class_names=("ellipse", "zebra")))

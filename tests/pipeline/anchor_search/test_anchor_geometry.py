"""The nearest-centre best anchor IoU (pipeline/anchor_search/geometry.py) against building every anchor."""

import math

import numpy as np
import pytest

from pipeline.anchor_search.geometry import BoxGrid, anchor_shapes


def _random_images(seed: int, num_images: int = 30):
    rng = np.random.default_rng(seed)
    boxes, sizes = [], []
    for _ in range(num_images):
        h, w = int(rng.integers(40, 300)), int(rng.integers(40, 300))  # odd sizes: padding matters
        n = int(rng.integers(0, 6))
        x1, y1 = rng.uniform(0, w - 2, n), rng.uniform(0, h - 2, n)
        x2 = np.minimum(w, x1 + np.exp(rng.uniform(0, np.log(250), n)))
        y2 = np.minimum(h, y1 + np.exp(rng.uniform(0, np.log(250), n)))
        boxes.append(np.stack([x1, y1, x2, y2], axis=1))
        sizes.append((h, w))
    return boxes, sizes


@pytest.mark.parametrize(
    ("strides", "scales", "ratios"),
    [
        ([8, 16, 32], [2.0, 4.0], [0.25, 0.5, 1.0, 2.0, 4.0]),
        ([8, 16, 32], [[1.5, 3.0], [2.2, 4.0], [3.0, 5.5]], [0.3, 1.0, 2.5]),
        ([4, 8, 16, 32, 64], [8.0], [0.5, 1.0, 2.0]),
        ([16], [0.7], [1.0]),
    ],
)
def test_equals_every_anchor_of_the_image(strides, scales, ratios, every_anchor_best_iou):
    boxes, sizes = _random_images(seed=len(strides))
    reference = every_anchor_best_iou(np.concatenate(boxes), np.repeat(np.asarray(sizes), [len(b) for b in boxes], 0),
                                      strides, scales, ratios)
    fast = BoxGrid.from_images(boxes, sizes, strides).best_iou(anchor_shapes(strides, scales, ratios))
    assert len(fast) == len(reference) > 40
    np.testing.assert_allclose(fast, reference, atol=1e-5)


def test_offsets_to_the_nearest_centre_hand_computed():
    # a 100 x 70 (h x w) image pads to 128 x 96 at stride 32; stride-16 centres at 8, 24, ..., 88 (x)
    boxes = np.array([[60.0, 100.0, 90.0, 126.0],   # centre (75, 113): stride 16 -> (72, 120); 32 -> (80, 112)
                      [0.0, 0.0, 2.0, 2.0]])        # centre (1, 1): the first cells (8, 8) and (16, 16)
    grid = BoxGrid.from_boxes(boxes, np.array([[100, 70], [100, 70]]), [16, 32])
    assert grid.offsets[0].tolist() == [[3.0, 7.0], [7.0, 7.0]]
    assert grid.offsets[1].tolist() == [[5.0, 1.0], [15.0, 15.0]]
    assert grid.wh.tolist() == [[30.0, 26.0], [2.0, 2.0]]
    # a 30 x 26 anchor (ratio 26/30, side sqrt(780)) on the stride-16 grid: iw = 30 - 3, ih = 26 - 7
    side = math.sqrt(30 * 26)
    iou = grid.best_iou(anchor_shapes([16, 32], [[side / 16], [100.0]], [26 / 30]))[0]
    inter = 27 * 19
    assert iou == pytest.approx(inter / (2 * 780 - inter))


def test_subset_and_dtype():
    boxes, sizes = _random_images(seed=3, num_images=10)
    grid = BoxGrid.from_images(boxes, sizes, [8, 16, 32])
    shapes = anchor_shapes([8, 16, 32], [2.0, 4.0], [0.5, 1.0, 2.0])
    full = grid.best_iou(shapes)
    index = np.array([0, 2, 5])
    np.testing.assert_array_equal(grid.subset(index).best_iou(shapes), full[index])
    np.testing.assert_allclose(grid.astype(np.float32).best_iou(shapes), full, atol=1e-5)
    empty = BoxGrid.from_images([np.zeros((0, 4))], [(64, 64)], [8])
    assert len(empty) == 0 and empty.best_iou(anchor_shapes([8], [2.0], [1.0])).shape == (0,)

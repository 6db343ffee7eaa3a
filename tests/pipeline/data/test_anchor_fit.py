"""Best-possible-recall of anchors (pipeline/data/anchor_fit.py), against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from pipeline.data.anchor_fit import anchor_fit, best_anchor_iou, best_anchor_iou_flat, gt_from_coco, gt_from_split

# one level, stride 16, anchor side 16 * 4 = 64; a 128 x 128 image has 8 x 8 locations
STRIDES, SCALES, RATIOS = [16], [4.0], [0.5, 1.0, 2.0]


def test_box_identical_to_an_anchor_has_iou_one():
    # location (row 2, col 3) is centred at (56, 40); the square anchor spans +-32
    box = torch.tensor([[56 - 32, 40 - 32, 56 + 32, 40 + 32]], dtype=torch.float32)
    best = best_anchor_iou([box], [(128, 128)], STRIDES, SCALES, RATIOS)
    assert best.tolist() == pytest.approx([1.0])


def test_one_to_eight_box_falls_below_the_threshold():
    # a 1:8 (h:w) box of the anchors' area, centred on a location: the best anchor is the
    # wide 0.5 one (w = 64*sqrt2, h = 64/sqrt2); hand-computed IoU = 0.5 / 1.0 = 0.5
    w, h = 64 * math.sqrt(8), 64 / math.sqrt(8)
    cx, cy = 56, 56
    box = torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])
    best = best_anchor_iou([box], [(128, 128)], STRIDES, SCALES, RATIOS)
    aw, ah = 64 * math.sqrt(2), 64 / math.sqrt(2)
    inter = aw * h
    assert best.item() == pytest.approx(inter / (w * h + aw * ah - inter), abs=1e-5)
    assert best.item() < 0.7
    fit = anchor_fit([box], [(128, 128)], [torch.tensor([1])], STRIDES, SCALES, RATIOS, 0.7, ["stick"])
    assert fit["bpr"] == 0.0 and fit["failing"]["elongated"] == 1
    assert "0.25/4 to model.anchors.aspect_ratios" in fit["warnings"][0]
    assert anchor_fit([box], [(128, 128)], None, STRIDES, SCALES, [0.125], 0.7)["bpr"] == 1.0


def test_summary_buckets_classes_and_small_box_advice():
    boxes = [np.array([[24.0, 8.0, 88.0, 72.0],  # an exact anchor: medium, IoU 1
                       [0.0, 0.0, 10.0, 10.0]]),  # tiny: best IoU 100/4096
             np.zeros((0, 4))]
    labels = [np.array([1, 2]), np.zeros(0)]
    fit = anchor_fit(boxes, [(128, 128), (128, 128)], labels, STRIDES, SCALES, RATIOS, 0.6, ["a", "b"])
    assert fit["num_boxes"] == 2 and fit["bpr"] == 0.5
    assert fit["mean_best_iou"] == pytest.approx((1 + 100 / 4096) / 2, abs=1e-4)
    assert fit["by_size"]["small"] == {"num_boxes": 1, "bpr": 0.0, "mean_best_iou": pytest.approx(0.0244, abs=1e-4)}
    assert fit["by_size"]["medium"]["bpr"] == 1.0 and fit["by_size"]["large"]["num_boxes"] == 0
    assert fit["by_class"]["a"]["bpr"] == 1.0 and fit["by_class"]["b"]["bpr"] == 0.0
    assert fit["failing"] == {"too_small": 1, "too_large": 0, "elongated": 0, "between_anchors": 0}
    assert "add smaller scales to model.anchors.scales" in fit["warnings"][0]


def test_padding_to_the_largest_stride_and_per_level_scales():
    # a 100 x 70 image pads to 128 x 96 at stride 32: level strides 16/32 give 8x6 and 4x3 locations;
    # the last stride-16 location (row 7, col 5: x = 88, y = 120) exists only thanks to the padding
    box = np.array([[88 - 16, 120 - 16, 88 + 16, 120 + 16]], dtype=np.float64)
    best = best_anchor_iou([box], [(100, 70)], [16, 32], [[2.0], [4.0]], [1.0])
    assert best.item() == pytest.approx(1.0)


def test_gt_from_coco_resizes_and_skips_crowd():
    coco = {"images": [{"id": 1, "width": 200, "height": 100}],
            "annotations": [{"image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 2, "iscrowd": 0},
                            {"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 1, "iscrowd": 1}]}
    boxes, sizes, labels = gt_from_coco(coco, min_size=50, max_size=1000)
    assert sizes == [(50, 100)]
    assert boxes[0].tolist() == [[5.0, 10.0, 20.0, 30.0]] and labels[0].tolist() == [2]


@pytest.mark.parametrize("strides, scales", [([8, 16, 32], [2.0, 4.0]), ([16, 32], [[2.0, 3.0], [4.0, 6.0]])])
def test_exact_fast_best_iou_equals_every_anchor(strides, scales, every_anchor_best_iou):
    # mixed portrait/landscape images, boxes of all sizes and shapes, some at and beyond the borders
    rng = np.random.default_rng(0)
    image_hw = rng.choice(np.array([[96, 130], [130, 96], [64, 64], [101, 77]]), size=400)
    w = np.exp(rng.uniform(np.log(2), np.log(150), 400))
    h = w * np.exp(rng.uniform(np.log(1 / 6), np.log(6), 400))
    cx, cy = rng.uniform(-0.1, 1.1, 400) * image_hw[:, 1], rng.uniform(-0.1, 1.1, 400) * image_hw[:, 0]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    ratios = [0.25, 0.5, 1.0, 2.0, 4.0]
    fast = best_anchor_iou_flat(boxes, image_hw, strides, scales, ratios, chunk=64)
    # the generator's anchors are float32 (the fast path works in float64): equal to ~1e-7
    np.testing.assert_allclose(fast, every_anchor_best_iou(boxes, image_hw, strides, scales, ratios), atol=1e-6)
    assert fast.min() < 0.3 and fast.max() > 0.8  # the case covers bad and good fits


def test_gt_from_split_equals_gt_from_coco_of_the_written_json():
    from pipeline.data.records import BoxColumns, Images, Split

    boxes = BoxColumns()
    boxes.add(1, 0, [10, 20, 30, 40], 2)
    boxes.add(2, 0, [0, 0, 5, 5], 1, iscrowd=1)
    boxes.add(3, 1, [1, 2, 3, 4], 1)
    images = Images(ids=np.array([1, 2]), widths=np.array([200, 60]), heights=np.array([100, 90]),
                    file_names=["a.jpg", "b.jpg"])
    split = Split("train", ["x", "y"], images, boxes.build())
    xyxy, hw, labels = gt_from_split(split, min_size=50, max_size=1000)
    coco = {"images": [{"id": 1, "width": 200, "height": 100}, {"id": 2, "width": 60, "height": 90}],
            "annotations": [{"image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 2, "iscrowd": 0},
                            {"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 1, "iscrowd": 1},
                            {"image_id": 2, "bbox": [1, 2, 3, 4], "category_id": 1, "iscrowd": 0}]}
    ref_boxes, ref_sizes, ref_labels = gt_from_coco(coco, min_size=50, max_size=1000)
    np.testing.assert_allclose(xyxy, np.concatenate(ref_boxes))
    assert hw.tolist() == [list(ref_sizes[0]), list(ref_sizes[1])] and labels.tolist() == [2, 1]

"""Best-possible-recall of anchors (pipeline/data/anchor_fit.py), against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from pipeline.data.anchor_fit import anchor_fit, best_anchor_iou, gt_from_coco

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

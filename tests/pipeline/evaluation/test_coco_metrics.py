"""COCO metrics on hand-built cases with known answers, checked against pycocotools directly."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.evaluation import STAT_NAMES, coco_metrics, pr_curves

# Two images, both classes present. Boxes xywh in original pixels.
GT = {
    1: [(1, [10, 10, 100, 100]), (2, [150, 20, 60, 40])],
    2: [(1, [50, 60, 80, 120])],
}


def _detections(shift_x: float = 0.0) -> list[dict]:
    return [{"image_id": image_id, "category_id": cat, "bbox": [x + shift_x, y, w, h], "score": 0.9}
            for image_id, objects in GT.items() for cat, (x, y, w, h) in objects]


def test_perfect_detections_give_ap_one(write_gt):
    metrics, _ = coco_metrics(write_gt(GT), _detections())
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["AP_per_class"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}


def test_iou_0_6_counts_at_ap50_not_at_ap75(write_gt):
    # Shifting every box by 24% of its width: IoU = (w - 0.24w) / (w + 0.24w) = 0.76 / 1.24 ≈ 0.613,
    # a match at IoU thresholds 0.50, 0.55, 0.60 only -> AP@[.5:.95] = 3/10.
    dets = [{**d, "bbox": [d["bbox"][0] + 0.24 * d["bbox"][2], *d["bbox"][1:]]} for d in _detections()]
    metrics, _ = coco_metrics(write_gt(GT), dets)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.3)


def test_no_detections_give_zeros_not_a_crash(write_gt):
    metrics, cocoeval = coco_metrics(write_gt(GT), [])
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert metrics[key] == 0.0, key
    assert metrics["AP_per_class"] == {"circle": 0.0, "square": 0.0}
    rows = pr_curves(cocoeval)
    assert {r["class"] for r in rows} == {"circle", "square"}
    assert all(r["precision"] == 0.0 for r in rows)


def test_class_without_ground_truth_is_minus_one(write_gt):
    gt = {1: [(1, [10, 10, 100, 100])]}
    metrics, cocoeval = coco_metrics(write_gt(gt), _detections()[:1])
    assert metrics["AP_per_class"] == {"circle": pytest.approx(1.0), "square": -1.0}
    assert {r["class"] for r in pr_curves(cocoeval)} == {"circle"}


def test_false_positive_ranked_first_halves_precision(write_gt):
    gt = {1: [(1, [10, 10, 100, 100])]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [200, 100, 50, 50], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100], "score": 0.8}]
    metrics, cocoeval = coco_metrics(write_gt(gt), dets)
    rows = pr_curves(cocoeval, iou=0.5)
    assert len(rows) == 101 and rows[0]["recall"] == 0.0 and rows[-1]["recall"] == 1.0
    assert all(r["precision"] == pytest.approx(0.5) for r in rows)
    assert metrics["AP50"] == pytest.approx(0.5)


def test_pr_curve_rejects_unknown_iou(write_gt):
    _, cocoeval = coco_metrics(write_gt(GT), _detections())
    with pytest.raises(ValueError, match="0.42"):
        pr_curves(cocoeval, iou=0.42)


def test_equals_pycocotools_run_directly(write_gt):
    rng = np.random.default_rng(0)
    dets = [{**d, "bbox": [v + float(rng.uniform(-8, 8)) for v in d["bbox"]], "score": float(rng.uniform())}
            for d in _detections() * 3]
    path = write_gt(GT)
    metrics, _ = coco_metrics(path, dets)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ref = COCOeval(gt, gt.loadRes(dets), "bbox")
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    assert [metrics[k] for k in STAT_NAMES] == pytest.approx(ref.stats.tolist())
    per_class = ref.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    assert list(metrics["AP_per_class"].values()) == pytest.approx(
        [per_class[:, :, k][per_class[:, :, k] > -1].mean() for k in range(2)])
    # every class has ground truth here, so AP is the mean of the per-class APs
    assert metrics["AP"] == pytest.approx(np.mean(list(metrics["AP_per_class"].values())))

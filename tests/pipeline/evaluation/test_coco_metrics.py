"""COCO metrics on hand-built cases with known answers, checked against pycocotools directly."""

import contextlib
import io
import json

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


def _pycocotools(path, dets):
    """The reference: pycocotools' COCOeval run directly."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ref = COCOeval(gt, gt.loadRes([dict(d) for d in dets]) if dets else _empty_results(gt), "bbox")
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    return ref


def _empty_results(gt):
    empty = COCO()
    empty.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def _random_case(rng, num_images=200, num_classes=5, max_dets=100):
    """Ground truth of all sizes (crowd boxes, images without objects, a class without any) and
    noisy detections around it plus false positives, up to ``max_dets`` per image."""
    gt, dets = {}, []
    for image_id in range(1, num_images + 1):
        objects = []
        for _ in range(int(rng.integers(0, 12))):
            side = float(np.exp(rng.uniform(np.log(4), np.log(300))))
            w, h = side * float(rng.uniform(0.3, 1.7)), side * float(rng.uniform(0.3, 1.7))
            objects.append((int(rng.integers(1, num_classes)), [float(rng.uniform(0, 600)), float(rng.uniform(0, 400)), w, h]))
        gt[image_id] = objects
        for cat, (x, y, w, h) in objects:
            if rng.uniform() < 0.8:
                dets.append({"image_id": image_id, "category_id": cat if rng.uniform() < 0.9 else num_classes,
                             "bbox": [x + float(rng.normal(0, w / 8)), y + float(rng.normal(0, h / 8)),
                                      w * float(rng.uniform(0.8, 1.25)), h * float(rng.uniform(0.8, 1.25))],
                             "score": float(rng.uniform())})
        for _ in range(int(rng.integers(0, max_dets - len(objects)))) if rng.uniform() < 0.3 else ():
            dets.append({"image_id": image_id, "category_id": int(rng.integers(1, num_classes + 1)),
                         "bbox": [float(v) for v in rng.uniform(0, 300, 4) + [0, 0, 2, 2]], "score": float(rng.uniform() * 0.5)})
    return gt, dets


def _write_random_gt(tmp_path, gt, num_classes, crowd_every=17):
    images = [{"id": i, "file_name": f"{i}.png", "height": 480, "width": 640} for i in gt]
    anns = []
    for image_id, objects in gt.items():
        for cat, box in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3] * 0.8, "iscrowd": int(len(anns) % crowd_every == 0)})
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    path = tmp_path / "random_gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _assert_equal_to_pycocotools(path, dets):
    metrics, ours = coco_metrics(path, dets)
    ref = _pycocotools(path, dets)
    assert [metrics[k] for k in STAT_NAMES] == pytest.approx(ref.stats.tolist(), abs=1e-4)
    precision = ref.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    expected = {}
    for k, cat in enumerate(ref.params.catIds):
        p = precision[:, :, k]
        expected[ref.cocoGt.cats[cat]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    assert metrics["AP_per_class"] == pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose(ours.eval["precision"], ref.eval["precision"], atol=1e-4)
    np.testing.assert_allclose(ours.eval["recall"], ref.eval["recall"], atol=1e-4)
    ref_rows = [(r["class"], r["recall"], r["precision"]) for r in pr_curves(ref)]
    assert [(r["class"], r["recall"]) for r in pr_curves(ours)] == [(c, r) for c, r, _ in ref_rows]
    assert [r["precision"] for r in pr_curves(ours)] == pytest.approx([p for _, _, p in ref_rows], abs=1e-4)


@pytest.mark.parametrize("case", ["perfect", "shifted", "none", "one_class", "noisy"])
def test_every_hand_built_case_equals_pycocotools(write_gt, case):
    gt, dets = GT, _detections()
    if case == "shifted":
        dets = [{**d, "bbox": [d["bbox"][0] + 0.24 * d["bbox"][2], *d["bbox"][1:]]} for d in dets]
    elif case == "none":
        dets = []
    elif case == "one_class":
        gt, dets = {1: [(1, [10, 10, 100, 100])]}, dets[:1]
    elif case == "noisy":
        rng = np.random.default_rng(0)
        dets = [{**d, "bbox": [v + float(rng.uniform(-8, 8)) for v in d["bbox"]], "score": float(rng.uniform())}
                for d in dets * 3]
    _assert_equal_to_pycocotools(write_gt(gt), dets)


def test_a_bigger_random_case_equals_pycocotools(tmp_path):
    rng = np.random.default_rng(7)
    gt, dets = _random_case(rng)
    assert len(dets) > 1000 and any(not objects for objects in gt.values())
    _assert_equal_to_pycocotools(_write_random_gt(tmp_path, gt, num_classes=5), dets)

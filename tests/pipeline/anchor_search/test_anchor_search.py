"""The anchor search (pipeline/anchor_search/search.py) on box sets with a known optimum."""

import math

import numpy as np
import pytest

from pipeline.anchor_search import AnchorSet, BoxGrid, fit_anchors, score
from pipeline.anchor_search.search import kmeans_1d, layouts

STRIDES = [8, 16, 32]


def _boxes(shapes, n=300, image=256, seed=0):
    """``n`` boxes cycling through ``(side, h/w)`` shapes (side jittered by 3%) at random places."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        side, ratio = shapes[i % len(shapes)]
        side *= math.exp(rng.normal(0, 0.03))
        w, h = side / math.sqrt(ratio), side * math.sqrt(ratio)
        x, y = rng.uniform(0, image - w), rng.uniform(0, image - h)
        rows.append([x, y, x + w, y + h])
    boxes = np.array(rows)
    return boxes, np.full((n, 2), image)


def _sides(anchors: AnchorSet) -> np.ndarray:
    return np.concatenate([np.sqrt(s.prod(axis=1)) for s in anchors.shapes(STRIDES)])


def test_layouts_and_kmeans():
    assert layouts(10) == [(1, 10), (2, 5), (3, 3), (5, 2), (10, 1)]
    assert layouts(1) == [(1, 1)]
    with pytest.raises(ValueError, match="budget must be >= 1"):
        layouts(0)
    low, high = np.linspace(0.5, 1.5, 50), np.linspace(4.0, 6.0, 30)
    np.testing.assert_allclose(kmeans_1d(np.r_[high, low], 2), [low.mean(), high.mean()])


@pytest.mark.parametrize("start", [AnchorSet.of([4.0], [1.0]), AnchorSet.of([4.0], [0.5, 1.0, 2.0])])
def test_wide_one_to_five_boxes_get_a_one_to_five_anchor_of_their_size(start, every_anchor_best_iou):
    boxes, hw = _boxes([(48.0, 0.2)])  # h/w = 0.2: 107 x 21 px
    grid = BoxGrid.from_boxes(boxes, hw, STRIDES)
    result = fit_anchors(grid, start, 0.6, generations=80)
    assert result.budget == start.per_location
    assert result.fitted.per_location <= start.per_location
    assert result.start_score.bpr < 0.1 and result.fitted_score.bpr > 0.95
    assert all(0.17 < r < 0.24 for r in result.fitted.aspect_ratios), result.fitted
    assert np.any(np.abs(np.log(_sides(result.fitted) / 48.0)) < math.log(1.1)), result.fitted
    # the reported score is the real one: every anchor of the image, built by the model's generator
    reference = every_anchor_best_iou(boxes, np.full((len(boxes), 2), 256), STRIDES,
                                      result.fitted.as_params()["scales"], result.fitted.aspect_ratios)
    assert result.fitted_score.bpr == pytest.approx((reference >= 0.6).mean(), abs=1e-9)
    assert result.fitted_score.mean_iou == pytest.approx(reference.mean(), abs=1e-5)


@pytest.mark.parametrize("per_level", [True, False])
def test_two_size_clusters_get_scales_near_both(per_level):
    boxes, hw = _boxes([(20.0, 1.0), (90.0, 1.0)])
    grid = BoxGrid.from_boxes(boxes, hw, STRIDES)
    result = fit_anchors(grid, AnchorSet.of([4.0, 8.0], [1.0]), 0.6, generations=80, per_level=per_level)
    assert result.fitted.per_level == per_level
    sides = _sides(result.fitted)
    for cluster in (20.0, 90.0):
        assert np.any(np.abs(np.log(sides / cluster)) < math.log(1.2)), (cluster, result.fitted)
    assert result.fitted_score.bpr > 0.8 > result.start_score.bpr


def test_never_worse_than_the_start():
    # boxes exactly on the anchors of level-3 cells: the start has BPR 1 and mean IoU 1, nothing beats it
    anchors = AnchorSet.of([[2.5, 3.0], [3.0, 3.5], [3.5, 4.0]], [0.5, 1.0, 2.0])
    rows = []
    for k, (w, h) in enumerate(anchors.shapes(STRIDES)[0]):
        cx, cy = 8 * (3 + 2 * k) + 4, 8 * (5 + k) + 4
        rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    grid = BoxGrid.from_boxes(np.array(rows), np.full((len(rows), 2), 128), STRIDES)
    result = fit_anchors(grid, anchors, 0.7, generations=4)
    assert result.start_score.bpr == 1.0 and result.start_score.mean_iou == pytest.approx(1.0)
    assert result.fitted == anchors and not result.improved

    # on messy data, whatever the search budget, the result scores at least the start on all boxes
    rng = np.random.default_rng(1)
    side, ratio = np.exp(rng.uniform(np.log(10), np.log(150), 500)), np.exp(rng.normal(0, 0.7, 500))
    w, h = np.minimum(side / np.sqrt(ratio), 250), np.minimum(side * np.sqrt(ratio), 250)
    x, y = rng.uniform(0, 256 - w), rng.uniform(0, 256 - h)
    grid = BoxGrid.from_boxes(np.stack([x, y, x + w, y + h], 1), np.full((500, 2), 256), STRIDES)
    start = AnchorSet.of([2.0, 4.0], [0.25, 0.5, 1.0, 2.0, 4.0])
    for generations in (1, 40):
        result = fit_anchors(grid, start, 0.6, generations=generations, search_boxes=100, seed=generations)
        assert result.fitted_score.value() >= score(grid, start, 0.6).value()
        assert result.fitted_score == score(grid, result.fitted, 0.6)


def test_budget_and_validation():
    boxes, hw = _boxes([(30.0, 0.5), (60.0, 2.0)], n=100)
    grid = BoxGrid.from_boxes(boxes, hw, STRIDES)
    result = fit_anchors(grid, AnchorSet.of([4.0], [1.0]), 0.6, budget=4, generations=20)
    assert result.budget == 4 and result.fitted.per_location <= 4
    assert {c["layout"] for c in result.candidates} == {"1 scale(s) x 4 ratio(s)", "2 scale(s) x 2 ratio(s)",
                                                        "4 scale(s) x 1 ratio(s)"}
    # a budget below the configured count: the configured anchors cannot be the answer, even if they fit best
    start = AnchorSet.of([2.0, 4.0], [0.5, 1.0, 2.0])
    small = fit_anchors(grid, start, 0.6, budget=2, generations=4)
    assert small.fitted.per_location <= 2 and small.fitted != start
    with pytest.raises(ValueError, match="no boxes"):
        fit_anchors(BoxGrid.from_images([np.zeros((0, 4))], [(64, 64)], STRIDES), AnchorSet.of([4.0], [1.0]), 0.6)


def test_anchor_fit_warning_names_a_computed_suggestion(every_anchor_best_iou):
    # the prepare stage's anchor-fit report (pipeline/data/anchor_fit.py) with suggest=True
    import json

    from pipeline.data.anchor_fit import anchor_fit

    boxes, hw = _boxes([(40.0, 0.2), (40.0, 5.0)], n=200)
    start_scales, start_ratios = [4.0], [0.5, 1.0, 2.0]
    fit = anchor_fit([boxes], [(256, 256)], None, STRIDES, start_scales, start_ratios, 0.6, suggest=True)
    suggestion = fit["suggestion"]
    assert suggestion["improved"] and suggestion["budget"] == 3 and fit["bpr"] < 0.5 < suggestion["bpr"]
    # what it names is what it measured: every anchor of the image, at the suggested settings
    reference = every_anchor_best_iou(boxes, np.full((len(boxes), 2), 256), STRIDES, suggestion["scales"],
                                      suggestion["aspect_ratios"])
    assert suggestion["bpr"] == pytest.approx(float((reference >= 0.6).mean()), abs=1e-4)
    (warning,) = fit["warnings"]
    assert f"reaches {suggestion['bpr']:.1%}" in warning
    assert f"--set model.anchors.scales={json.dumps(suggestion['scales'], separators=(',', ':'))}" in warning
    assert "python -m pipeline anchors" in warning and "e.g. [6, 8, 11]" not in warning
    # the RPN thresholds proposed with them, from the same best IoUs (pipeline/anchor_search/thresholds.py)
    from pipeline.anchor_search.thresholds import propose_iou_thresholds

    assert suggestion["iou_thresholds"] == propose_iou_thresholds(reference).as_params()
    assert f"--set model.rpn.iou_thresholds={json.dumps(suggestion['iou_thresholds'], separators=(',', ':'))}" in warning
    ratios = suggestion["aspect_ratios"]
    assert min(ratios) < 0.3 and max(ratios) > 3.5  # both 1:5 and 5:1 covered
    # without suggest (the val split, the tune trials) no search runs and no suggestion is made
    assert "suggestion" not in anchor_fit([boxes], [(256, 256)], None, STRIDES, start_scales, start_ratios, 0.6)

"""RPN IoU thresholds proposed from best-anchor IoUs (pipeline/anchor_search/thresholds.py)."""

import numpy as np
import pytest

from pipeline.anchor_search.thresholds import propose_iou_thresholds


def test_foreground_is_the_highest_grid_value_that_the_asked_share_reaches():
    best = np.array([0.52] * 5 + [0.8] * 95)  # 95% at 0.8, 100% at 0.52
    t = propose_iou_thresholds(best, coverage=0.95, margin=0.1)
    assert t.as_params() == [0.6, 0.7] and t.coverage == 0.95 and t.reached  # capped at Faster R-CNN's 0.7
    t = propose_iou_thresholds(best, coverage=1.0, margin=0.1)
    assert t.as_params() == [0.4, 0.5] and t.coverage == 1.0  # 0.5 is the highest that every box reaches
    t = propose_iou_thresholds(np.array([0.6, 0.62, 0.3]), coverage=0.6, margin=0.2)
    assert t.as_params() == [0.4, 0.6]  # 2 of 3 reach 0.6; 0.65 none


def test_floor_and_background_minimum():
    t = propose_iou_thresholds(np.array([0.1, 0.2, 0.35]), coverage=0.95, margin=0.5)
    assert t.foreground == 0.4 and not t.reached and t.coverage == 0.0
    assert t.background == 0.1  # fg - margin floored at 0.1
    with pytest.raises(ValueError, match="no boxes"):
        propose_iou_thresholds(np.zeros(0))
    with pytest.raises(ValueError, match="coverage"):
        propose_iou_thresholds(np.ones(3), coverage=0.0)

"""Trials table, best params, the winner's one-liner and the plot (pipeline/tuning/results.py)."""

import csv
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.params import apply_overrides, load_params
from pipeline.tuning.results import (
    FINISHED,
    STOPPED,
    TrialRecord,
    apply_best_params,
    best_params,
    best_trial,
    plot_trials,
    train_best_command,
    trial_status,
    trials_table,
    write_best_params,
    write_trials_csv,
)
from pipeline.tuning.space import parse_space

REPO = Path(__file__).resolve().parents[3]
SPACE = {
    "model.anchors.scales": {"grid": [[4], [8], [4, 8]]},
    "model.anchors.aspect_ratios": {"grid": [[0.5, 1.0, 2.0], [0.25, 0.5, 1.0, 2.0, 4.0]]},
    "train.lr": {"loguniform": [0.005, 0.05]},
}


def _record(tid, scales, ratios, lr, aps, bpr=0.5):
    history = [{"epoch": 0, "anchor_bpr": bpr}] + [{"epoch": i + 1, "AP50": ap, "AP": ap / 2} for i, ap in enumerate(aps)]
    config = {"model.anchors.scales": scales, "model.anchors.aspect_ratios": ratios, "train.lr": np.float64(lr)}
    return TrialRecord(tid, config, history)


@pytest.fixture
def records():
    rs = [
        _record("a", [4], [0.5, 1.0, 2.0], 0.01, [0.1, 0.2, 0.3], bpr=0.6),
        _record("b", [8], [0.25, 0.5, 1.0, 2.0, 4.0], 0.02, [0.2, 0.4, 0.5], bpr=0.9),
        _record("c", [4, 8], [0.5, 1.0, 2.0], 0.03, [0.05]),
    ]
    for r in rs:
        r.status = trial_status(r, epochs=3, errored=False)
    return rs


def test_status_best_and_table(records):
    assert [r.status for r in records] == [FINISHED, FINISHED, STOPPED]
    assert isinstance(records[0].config["train.lr"], float)  # numpy scalars made plain
    best = best_trial(records, "AP50")
    assert best.trial_id == "b"
    assert best_trial(records, "AP50", mode="min").trial_id == "c"
    rows = trials_table(records, parse_space(SPACE), ["AP50", "AP"], best)
    assert rows[1] == {"trial_id": "b", "status": FINISHED, "epochs": 3, "AP50": 0.5, "AP": 0.25, "anchor_bpr": 0.9,
                       "model.anchors.scales": "[8]", "model.anchors.aspect_ratios": "[0.25, 0.5, 1.0, 2.0, 4.0]",
                       "train.lr": 0.02, "best": True, "mlflow_run_id": None}
    with pytest.raises(ValueError, match="no trial reported AP75"):
        best_trial(records, "AP75")


def test_trials_csv_round_trip(tmp_path, records):
    rows = trials_table(records, parse_space(SPACE), ["AP50"], records[1])
    path = write_trials_csv(rows, tmp_path / "tune" / "trials.csv")
    with path.open() as f:
        back = list(csv.DictReader(f))
    assert [r["trial_id"] for r in back] == ["a", "b", "c"]
    assert back[2]["status"] == STOPPED and back[2]["model.anchors.scales"] == "[4, 8]"


def test_best_params_merge_and_validate(tmp_path, records):
    base = load_params(REPO / "params.yaml").to_dict()
    path = write_best_params(records[1], base, tmp_path / "best_params.yaml", metric="AP50", sweep_id="s1")
    text = path.read_text()
    assert text.startswith("# Best trial b of sweep s1: AP50 = 0.5")
    best = yaml.safe_load(text)
    assert set(best) == {"model", "train"} and best["train"] == {"lr": 0.02}
    assert best["model"]["anchors"] == {"scales": [8], "aspect_ratios": [0.25, 0.5, 1.0, 2.0, 4.0]}
    assert best["model"]["rpn"] == base["model"]["rpn"]  # untouched keys come from the base
    from detector import DetectorConfig

    assert DetectorConfig.from_dict(best["model"], num_classes=3).anchors.aspect_ratios[0] == 0.25
    assert best_params(records[1], base)["model"]["anchors"]["scales"] == [8]


def test_train_best_command_sets_parse_back(records):
    command = train_best_command(records[1])
    argv = shlex.split(command)
    assert argv[:3] == ["dvc", "exp", "run"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
    raw = apply_overrides({}, sets)  # the same syntax as --set
    assert raw == {"model": {"anchors": {"scales": [8], "aspect_ratios": [0.25, 0.5, 1.0, 2.0, 4.0]}},
                   "train": {"lr": 0.02}}


def test_apply_keeps_comments(tmp_path, records):
    params_path = tmp_path / "params.yaml"
    params_path.write_text((REPO / "params.yaml").read_text())
    base = load_params(params_path).to_dict()
    best_path = write_best_params(records[1], base, tmp_path / "best.yaml", metric="AP50", sweep_id="s1")
    changes = apply_best_params(best_path, params_path, list(records[1].config))
    assert changes[0] == "model.anchors.scales=[8]"
    text = params_path.read_text()
    assert "# anchor side = FPN stride x scale" in text and "scales: [8]" in text
    assert "aspect_ratios: [0.25, 0.5, 1.0, 2.0, 4.0]" in text
    params = load_params(params_path)
    assert params.train.lr == 0.02 and params.model["anchors"]["scales"] == [8]


def test_plot_writes_png(tmp_path, records):
    dims = parse_space({**SPACE, "model.roi.iou_threshold": {"uniform": [0.4, 0.6]}})
    path = plot_trials(records, dims, "AP50", tmp_path / "ap.png", best=records[1])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_named_anchor_set_expands_in_best_params_command_and_apply(tmp_path):
    fitted = {"scales": [[3.0, 4.5], [3.5, 4.5], [2.5, 3.0]], "aspect_ratios": [0.3, 1.0, 3.0]}
    named = {"model.anchors": {"fitted": fitted, "default": {"scales": [2.0, 4.0], "aspect_ratios": [1.0]}}}
    winner = TrialRecord("t7", {"model.anchors": "fitted", "model.rpn.iou_thresholds": [0.4, 0.5]},
                         [{"epoch": 1, "AP50": 0.7}])
    params_path = tmp_path / "params.yaml"
    params_path.write_text((REPO / "params.yaml").read_text())
    before = params_path.read_text().splitlines()
    base = load_params(params_path).to_dict()

    best_path = write_best_params(winner, base, tmp_path / "best.yaml", metric="AP50", sweep_id="s", named=named)
    text = best_path.read_text()
    assert "# (model.anchors: fitted: the values below)" in text
    best = yaml.safe_load(text)
    assert best["model"]["anchors"] == fitted and best["model"]["rpn"]["iou_thresholds"] == [0.4, 0.5]

    argv = shlex.split(train_best_command(winner, named))
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
    assert sets == ["model.anchors.scales=[[3.0, 4.5], [3.5, 4.5], [2.5, 3.0]]",
                    "model.anchors.aspect_ratios=[0.3, 1.0, 3.0]", "model.rpn.iou_thresholds=[0.4, 0.5]"]

    changes = apply_best_params(best_path, params_path, list(winner.config))
    assert [c.split("=")[0] for c in changes] == ["model.anchors.scales", "model.anchors.aspect_ratios",
                                                  "model.rpn.iou_thresholds"]
    after = params_path.read_text().splitlines()
    assert len(after) == len(before)
    assert [b.split(":")[0].strip() for a, b in zip(before, after) if a != b] == [
        "scales", "aspect_ratios", "iou_thresholds"]  # every other line, comments included, unchanged
    params = load_params(params_path)
    assert params.model["anchors"] == fitted and params.model["rpn"]["iou_thresholds"] == [0.4, 0.5]

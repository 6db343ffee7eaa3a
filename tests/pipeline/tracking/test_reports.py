"""Training reports: the curve CSV and PNG, the summary, flattened params."""

import csv
import json

from pipeline.tracking import mlflow_runs as tracking
from pipeline.tracking import reports


def test_reports_curve_csv_png_and_summary(tmp_path):
    history = [
        {"epoch": 2, "loss": 0.8, "loss_cls": 0.5, "loss_box": 0.3, "lr": 0.01, "images_per_s": 4.0, "AP50": 0.2},
        {"epoch": 1, "loss": 1.0, "loss_cls": 0.6, "loss_box": 0.4, "lr": 0.02, "images_per_s": 3.0},
    ]
    path = reports.write_curve_csv(history, tmp_path / "curve.csv")
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["epoch", "loss", "loss_box", "loss_cls", "lr", "images_per_s", "AP50"]
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["AP50"] == "" and rows[1]["AP50"] == "0.2"
    assert reports.write_loss_png(history, tmp_path / "loss.png").stat().st_size > 1000
    reports.write_summary({"loss": 0.8}, tmp_path / "train.json")
    assert json.loads((tmp_path / "train.json").read_text()) == {"loss": 0.8}
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}

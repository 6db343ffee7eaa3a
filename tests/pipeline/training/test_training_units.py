"""Pure pieces of the training stage: finite checks, crowd filtering, run names, reports, preflight."""

import csv
import json

import pytest
import torch

from pipeline.training import driver, reports, storage, tracking
from pipeline.training.loop import NonFiniteLossError, check_finite, training_targets


def test_non_finite_loss_names_step_and_terms():
    check_finite({"loss_cls": 0.5, "loss_box": 0.1}, epoch=0, step=3, global_step=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 4 \(global step 14\).*loss_cls=nan"):
        check_finite({"loss_cls": float("nan"), "loss_box": 0.1}, epoch=1, step=3, global_step=13)
    with pytest.raises(NonFiniteLossError, match="total=inf"):
        check_finite({"loss_cls": 0.5}, epoch=0, step=0, global_step=0, total=float("inf"))


def test_crowd_boxes_are_not_training_targets():
    target = {"boxes": torch.tensor([[0, 0, 5, 5], [1, 1, 9, 9]], dtype=torch.float32),
              "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([0, 1])}
    (out,) = training_targets([target])
    assert out["boxes"].tolist() == [[0, 0, 5, 5]] and out["labels"].tolist() == [1]
    assert out["labels"].dtype == torch.int64 and set(out) == {"boxes", "labels"}


def test_run_name_follows_params_and_data(tiny_params, tiny_coco):
    a, b = tiny_params(), tiny_params("train.lr=0.5")
    name = driver.default_run_name(a, tiny_coco)
    assert name == driver.default_run_name(tiny_params(), tiny_coco)  # deterministic: a rerun resumes
    assert name != driver.default_run_name(b, tiny_coco)              # changed config: a fresh run
    for result_changing in ("ray.num_workers=2", "ray.num_workers=[1,2]", "ray.use_gpu=true", "data.resize.min_size=32"):
        assert name != driver.default_run_name(tiny_params(result_changing), tiny_coco), result_changing
    for infrastructure in ("ray.max_failures=3", "ray.address=auto", "ray.storage_path=/elsewhere",
                           "ray.cpus_per_worker=2", "ray.checkpoints_to_keep=5", "mlflow.tracking_uri=http://h:1",
                           "mlflow.experiment_name=other", "mlflow.log_model=true", "evaluate.batch_size=1"):
        assert name == driver.default_run_name(tiny_params(infrastructure), tiny_coco), infrastructure
    (tiny_coco / "train.json").write_text((tiny_coco / "train.json").read_text() + " ")
    assert name != driver.default_run_name(a, tiny_coco)               # changed data: a fresh run


def test_storage_path_and_tracking_uri_defaults(tmp_path, monkeypatch):
    assert driver.resolve_storage_path(None, tmp_path) == str(tmp_path.resolve() / "ray_results")
    assert driver.resolve_storage_path("s3://bucket/runs", tmp_path) == "s3://bucket/runs"
    monkeypatch.chdir(tmp_path)
    assert driver.resolve_storage_path("rel/dir") == str(tmp_path.resolve() / "rel" / "dir")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:5000")
    assert tracking.resolve_tracking_uri(None, tmp_path) == "http://h:5000"
    assert tracking.resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_preflight_storage_and_tracking_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(storage.StorageError, match="storage_path .* is not writable"):
        storage.check_writable(str(blocker / "runs"))
    with pytest.raises(RuntimeError, match="not reachable"):
        tracking.check_reachable("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(RuntimeError, match="not writable"):
        tracking.check_reachable(f"sqlite:///{blocker}/sub/mlflow.db")


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


def test_a_finished_run_continues_only_to_train_more_epochs(tiny_params):
    finished = {"status": "finished", "epochs": 1}
    driver._check_continuable("r", finished, ["params"], tiny_params("train.epochs=3"))  # more epochs: fine
    driver._check_continuable("r", {"status": "running"}, ["code"], tiny_params())        # interrupted: fine
    with pytest.raises(driver.TrainingError, match="finished with other code, torch; continuing it would mix"):
        driver._check_continuable("r", finished, ["params", "code", "torch"], tiny_params("train.epochs=3"))
    with pytest.raises(driver.TrainingError, match="already finished 1 epoch.*would train nothing"):
        driver._check_continuable("r", finished, ["params"], tiny_params("train.lr=0.1"))

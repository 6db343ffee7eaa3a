"""The ``evaluate`` stage end to end on tiny data: reports, rescaling, no detections, MLflow."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["circle", "square"]
# (h, w) = (80, 120); resized with min_size=40, max_size=60 to (40, 60): half size.
# In this process (evaluate.cluster=false): the fake models below live in the test's process; the Ray
# path is tested against this one in tests/pipeline/evaluation/test_batch_inference.py.
ORIG_HW, RESIZE = (80, 120), ["--set", "data.resize.min_size=40", "--set", "data.resize.max_size=60",
                              "--set", "evaluate.cluster=false"]
GT_XYWH = [20.0, 10.0, 40.0, 40.0]  # label 2, in original pixels, in every image


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A repo-like folder: params.yaml and data/prepared/val.json with 3 images."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    prepared = tmp_path / "data" / "prepared"
    (prepared / "images" / "val").mkdir(parents=True)
    images, anns = [], []
    rng = np.random.default_rng(0)
    for image_id in (3, 5, 8):
        file_name = f"images/val/{image_id:06d}.png"
        pixels = rng.integers(0, 255, (*ORIG_HW, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(prepared / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": ORIG_HW[0], "width": ORIG_HW[1]})
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 2, "bbox": GT_XYWH,
                     "area": GT_XYWH[2] * GT_XYWH[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    (prepared / "val.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return tmp_path


@pytest.fixture
def tiny_checkpoint(workdir):
    """An untrained, tiny real detector saved at models/model.pt."""
    from detector import DetectorConfig, build_model, save_checkpoint

    config = DetectorConfig.from_dict(
        {"backbone": "mobilenet_v3_large", "fpn_channels": 16, "roi": {"head_dim": 32},
         "rpn": {"pre_nms_topk_test": 100, "post_nms_topk_test": 50}}, num_classes=2, class_names=CLASSES)
    torch.manual_seed(0)
    save_checkpoint(workdir / "models" / "model.pt", build_model(config))
    return workdir / "models" / "model.pt"


@pytest.fixture
def mlflow_uri(workdir, sqlite_store):
    """An empty sqlite tracking store in ``workdir``."""
    return sqlite_store(workdir)


class FixedBoxDetector(nn.Module):
    """Returns ``boxes`` (xyxy, in the pixels of the tensor it is given) for every image."""

    def __init__(self, boxes, labels):
        super().__init__()
        self.boxes, self.labels = boxes, labels
        self.sizes = []

    def forward(self, images):
        self.sizes += [tuple(image.shape[-2:]) for image in images]
        n = len(self.boxes)
        return [{"boxes": torch.tensor(self.boxes, dtype=torch.float32).reshape(n, 4),
                 "scores": torch.full((n,), 0.9), "labels": torch.tensor(self.labels, dtype=torch.int64)}
                for _ in images]


@pytest.fixture
def fake_model(workdir, monkeypatch):
    """Make ``detector.load_checkpoint`` return the given fake model."""
    (workdir / "models").mkdir(exist_ok=True)
    (workdir / "models" / "model.pt").write_bytes(b"not used")

    def install(model):
        monkeypatch.setattr("detector.load_checkpoint", lambda path, map_location="cpu": model)
        return model
    return install


def _pycocotools_stats(gt_path, det_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(det_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats.tolist()


def test_end_to_end_with_tiny_untrained_checkpoint(workdir, tiny_checkpoint, capsys):
    assert main(["evaluate", *RESIZE, "--set", "evaluate.num_pictures=2", "--set", "evaluate.batch_size=2"]) == 0
    reports = workdir / "reports"
    metrics = json.loads((reports / "evaluation.json").read_text())  # everything
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "images_per_s", "ms_per_image"):
        assert isinstance(metrics[key], float), key
    assert set(metrics["AP_per_class"]) == set(CLASSES)
    assert metrics["AP_per_class"]["circle"] == -1.0  # no ground truth of that class
    assert metrics["num_images"] == 3 and metrics["images_per_s"] > 0
    # the DVC metric: the headline numbers, the images left out (none) and one AP per class, nothing else
    headline = json.loads((reports / "metrics.json").read_text())
    assert headline == {**{k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100",
                                                  "images_per_s")}, "excluded_images": 0,
                        "AP_circle": -1.0, "AP_square": metrics["AP_per_class"]["square"]}

    detections = json.loads((reports / "detections.json").read_text())
    assert detections and metrics["num_detections"] == len(detections)
    assert {d["image_id"] for d in detections} <= {3, 5, 8}
    for d in detections:  # boxes in original pixels
        x, y, w, h = d["bbox"]
        assert -0.01 <= x and x + w <= ORIG_HW[1] + 0.01 and -0.01 <= y and y + h <= ORIG_HW[0] + 0.01
        assert d["score"] >= 0.05
    # our metrics are pycocotools' on the written files, no re-implementation drift
    stats = _pycocotools_stats(workdir / "data/prepared/val.json", reports / "detections.json")
    assert [metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")] == \
        pytest.approx(stats[:9])

    header, *rows = (reports / "pr_curve.csv").read_text().splitlines()
    assert header == "class,recall,precision" and len(rows) == 101 and rows[0].startswith("square,0.0,")
    for name in ("pr_curve.png", "per_class_ap.png", "predictions/grid.png", "predictions/image_3.png",
                 "predictions/image_5.png"):
        assert Image.open(reports / name).size[0] > 0, name
    assert not (reports / "predictions" / "image_8.png").exists()  # num_pictures=2
    out = capsys.readouterr()
    assert "Average Precision" in out.out and "not logged to MLflow" in out.err
    assert "Accumulating evaluation results" not in out.out  # only the summary table is shown


def test_boxes_are_mapped_back_to_original_pixels(workdir, fake_model):
    # the model sees half-size images: the ground truth box halved is a perfect detection
    x, y, w, h = GT_XYWH
    model = fake_model(FixedBoxDetector([[x / 2, y / 2, (x + w) / 2, (y + h) / 2]], [2]))
    assert main(["evaluate", *RESIZE]) == 0
    assert set(model.sizes) == {(40, 60)}
    detections = json.loads((workdir / "reports" / "detections.json").read_text())
    assert [d["bbox"] for d in detections] == [GT_XYWH] * 3
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP_square"] == pytest.approx(1.0)


def test_an_undecodable_image_is_excluded_from_the_metrics_and_listed(workdir, fake_model, corrupt_jpeg, capsys):
    x, y, w, h = GT_XYWH
    fake_model(FixedBoxDetector([[x / 2, y / 2, (x + w) / 2, (y + h) / 2]], [2]))
    val = workdir / "data" / "prepared" / "val.json"
    coco = json.loads(val.read_text())
    bad = corrupt_jpeg(val.parent / "images" / "val" / "bad.jpg", size=(ORIG_HW[1], ORIG_HW[0]))
    coco["images"][1]["file_name"] = "images/val/bad.jpg"
    val.write_text(json.dumps(coco))
    assert main(["evaluate", *RESIZE, "--set", "data.max_bad_fraction=0.5"]) == 0
    out, err = capsys.readouterr()
    assert "the metrics exclude 1 of the 3 images" in out and "images/val/bad.jpg: OSError: broken data stream" in err
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["excluded_images"] == 1  # no miss counted for it
    evaluation = json.loads((workdir / "reports" / "evaluation.json").read_text())
    (excluded,) = evaluation["skipped"]
    assert Path(excluded["path"]).resolve() == bad.resolve() and evaluation["num_images"] == 2
    # above data.max_bad_fraction (default 0.001): the stage stops with the list
    assert main(["evaluate", *RESIZE]) == 1
    assert "1 of the 3 images of" in capsys.readouterr().err


def test_no_detections_give_zeros(workdir, fake_model):
    fake_model(FixedBoxDetector([], []))
    assert main(["evaluate", *RESIZE]) == 0
    reports = workdir / "reports"
    metrics = json.loads((reports / "evaluation.json").read_text())
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AR100"] == 0.0
    assert metrics["AP_per_class"]["square"] == 0.0 and metrics["num_detections"] == 0
    assert json.loads((reports / "detections.json").read_text()) == []
    assert all(row.endswith(",0.0") for row in (reports / "pr_curve.csv").read_text().splitlines()[1:])
    assert (reports / "pr_curve.png").is_file() and (reports / "predictions" / "grid.png").is_file()


def test_missing_or_corrupt_inputs_are_clear_errors(workdir, capsys):
    assert main(["evaluate"]) == 2
    assert "models/model.pt: model checkpoint not found" in capsys.readouterr().err
    (workdir / "models").mkdir()
    (workdir / "models" / "model.pt").write_bytes(b"garbage")
    assert main(["evaluate"]) == 2
    assert "models/model.pt' could not be read" in capsys.readouterr().err
    assert main(["evaluate", "--val", "nope.json"]) == 2
    assert "nope.json not found" in capsys.readouterr().err
    assert not (workdir / "reports").exists()


def test_logs_into_the_training_run_and_survives_a_missing_run(workdir, fake_model, mlflow_uri, capsys):
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("test", artifact_location=str(workdir / "mlruns"))
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id)
    run_file = workdir / "models" / "mlflow_run.json"
    x, y, w, h = GT_XYWH
    fake_model(FixedBoxDetector([[x / 2, y / 2, (x + w) / 2, (y + h) / 2]], [2]))

    run_file.write_text(json.dumps({"run_id": "0" * 32, "tracking_uri": uri, "experiment_id": experiment_id}))
    assert main(["evaluate", *RESIZE]) == 0  # an unreachable run: warned about, reports still written
    assert "warning: could not log evaluation to MLflow run 000" in capsys.readouterr().err
    assert (workdir / "reports" / "metrics.json").is_file()

    run_file.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment_id": experiment_id}))
    assert main(["evaluate", *RESIZE]) == 0
    run = client.get_run(run_id)
    assert run.data.metrics["eval/AP"] == pytest.approx(1.0)
    assert run.data.metrics["eval/AP_per_class/square"] == pytest.approx(1.0)
    assert "eval/AP_per_class/circle" not in run.data.metrics  # -1: no ground truth
    assert "eval/ms_per_image" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/detections.json", "evaluation/pr_curve.csv",
            "evaluation/pr_curve.png", "evaluation/per_class_ap.png", "evaluation/predictions"} <= logged
    assert run.info.status == "FINISHED"


def test_a_tracking_outage_is_retried_then_fails_the_stage(workdir, fake_model, monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on: the tracking server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    x, y, w, h = GT_XYWH
    fake_model(FixedBoxDetector([[x / 2, y / 2, (x + w) / 2, (y + h) / 2]], [2]))
    (workdir / "models" / "mlflow_run.json").write_text(json.dumps({"run_id": "a" * 32,
                                                                     "tracking_uri": f"http://127.0.0.1:{port}"}))
    args = ["evaluate", *RESIZE, "--set", "evaluate.tracking_retries=2", "--set", "evaluate.tracking_backoff_s=0.05"]
    assert main(args) == 1  # DVC does not cache a stage that failed: the record is made on the next run
    err = capsys.readouterr().err
    assert err.count("retrying in") == 2 and "(1/2)" in err and "(2/2)" in err
    assert f"error: could not log the evaluation to MLflow run {'a' * 32} at http://127.0.0.1:{port} after 3 tries" in err
    assert "rerun `python -m pipeline evaluate`" in err
    assert (workdir / "reports" / "metrics.json").is_file()  # the reports are complete either way


def test_a_failed_try_is_retried(tmp_path, monkeypatch):
    from pipeline.tracking import evaluation

    run_file = tmp_path / "mlflow_run.json"
    run_file.write_text(json.dumps({"run_id": "r1", "tracking_uri": "http://unused"}))
    tries = []

    def flaky(uri, run_id, metrics, artifacts, artifact_path):
        tries.append(run_id)
        if len(tries) == 1:
            raise ConnectionError("server restarting")

    monkeypatch.setattr(evaluation, "_log", flaky)
    assert evaluation.log_to_training_run(run_file, {"AP": 0.5}, [], retries=3, backoff_s=0.01) == "r1"
    assert tries == ["r1", "r1"]

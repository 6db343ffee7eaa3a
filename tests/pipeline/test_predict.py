"""The ``predict`` command: a real tiny checkpoint, corrupt files, boxes in original pixels, MLflow URIs;
folders, globs and lists of paths on the Ray cluster."""

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
RESIZE = ["--set", "data.resize.min_size=40", "--set", "data.resize.max_size=60"]
LOCAL = ["--set", "evaluate.cluster=false"]  # in this process: the fake models below live in the test's process


def _outputs(out):
    """(rows of predictions.jsonl, summary.json) of an output folder."""
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path


@pytest.fixture
def images(workdir):
    """``in/``: two good images (80x120 and 60x60), a corrupt jpg, a truncated png and a text file."""
    folder = workdir / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(folder / "b.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder / "truncated.png").write_bytes((folder / "a.png").read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image, not a candidate")
    return folder


@pytest.fixture
def tiny_model(workdir):
    from detector import DetectorConfig, build_model

    config = DetectorConfig.from_dict(
        {"backbone": "mobilenet_v3_large", "fpn_channels": 16, "roi": {"head_dim": 32},
         "rpn": {"pre_nms_topk_test": 100, "post_nms_topk_test": 50}}, num_classes=2, class_names=CLASSES)
    torch.manual_seed(0)
    return build_model(config).eval()


@pytest.fixture
def mlflow_uri(workdir, sqlite_store):
    """An empty sqlite tracking store in ``workdir``."""
    return sqlite_store(workdir)


@pytest.mark.slow
def test_folder_glob_and_list_with_unreadable_files_on_the_cluster(workdir, images, tiny_model, capsys, monkeypatch):
    """On a local Ray: outputs for every readable image, each unreadable one listed (stderr, summary.json).
    The driver never builds the model: the replicas load it from the checkpoint's bytes."""
    import ray

    from detector import save_checkpoint
    from pipeline.inference import loading

    def no_model_in_the_driver(*args, **kwargs):
        raise AssertionError("the driver built the model")

    monkeypatch.setattr(loading, "load_model", no_model_in_the_driver)

    save_checkpoint(workdir / "model.pt", tiny_model)
    (workdir / "list.txt").write_text("in/a.png\n\n# a comment\nin/corrupt.jpg\n")
    if ray.is_initialized():
        ray.shutdown()
    code = main(["predict", "--model", "model.pt", "--images", str(images), str(images / "*.jpg"), "list.txt",
                 "--out", "out", "--score-threshold", "0", "--draw", "1", *RESIZE])
    assert code == 1 and not ray.is_initialized()  # the stage shut down the Ray it started
    err = capsys.readouterr().err
    assert "corrupt.jpg" in err and "truncated.png" in err and "notes.txt" not in err
    rows, summary = _outputs(workdir / "out")
    # folder: a, b, corrupt, truncated; glob *.jpg: b, corrupt; list: a, corrupt
    assert [row["file_name"] for row in sorted(rows, key=lambda r: r["id"])] == ["a.png", "b.jpg", "b.jpg", "a.png"]
    assert summary["num_images"] == 8 and summary["num_skipped"] == 4 and summary["decode_nodes"]
    assert sorted(Path(f["path"]).name for f in summary["skipped"]) == ["corrupt.jpg"] * 3 + ["truncated.png"]
    assert summary["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    assert len(summary["replica_nodes"]) == 1 and summary["images_per_s"] > 0
    assert any(row["detections"] for row in rows), "an untrained model still scores every class at ~1/3"
    for row in rows:
        assert (row["height"], row["width"]) == {"a.png": (80, 120), "b.jpg": (60, 60)}[row["file_name"]]
        for det in row["detections"]:
            x, y, bw, bh = det["bbox"]
            assert -0.01 <= x and x + bw <= row["width"] + 0.01 and -0.01 <= y and y + bh <= row["height"] + 0.01
            assert det["category_name"] == CLASSES[det["category_id"] - 1]
    (drawn,) = [row for row in rows if "rendered" in row]  # --draw 1: the image at its size, a legend below
    rendered = Image.open(workdir / "out" / drawn["rendered"])
    assert rendered.width == drawn["width"] and rendered.height > drawn["height"]


class FixedBoxDetector(nn.Module):
    class_names = CLASSES
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, images):
        self.sizes += [tuple(image.shape[-2:]) for image in images]
        return [{"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]]), "scores": torch.tensor([0.8]),
                 "labels": torch.tensor([2])} for _ in images]


def test_boxes_in_original_pixels_and_missing_files(workdir, images, monkeypatch, capsys):
    model = FixedBoxDetector()
    monkeypatch.setattr("detector.load_checkpoint", lambda path, map_location="cpu": model)
    (workdir / "model.pt").write_bytes(b"not used")
    code = main(["predict", "--model", "model.pt", "--images", str(images / "a.png"), "missing.png", "--out", "o",
                 *RESIZE, *LOCAL])
    assert code == 1 and "missing.png" in capsys.readouterr().err
    assert model.sizes == [(40, 60)]  # 80x120 resized with min_size=40, max_size=60
    (row,), summary = _outputs(workdir / "o")
    (det,) = row["detections"]
    assert det["bbox"] == [20.0, 10.0, 40.0, 40.0] and det["category_name"] == "square"
    assert row["file_name"] == "a.png" and det["score"] == pytest.approx(0.8)
    assert [Path(f["path"]).name for f in summary["skipped"]] == ["missing.png"]

    assert main(["predict", "--model", "model.pt", "--images", str(images / "a.png"), "--out", "o2", *RESIZE,
                 *LOCAL]) == 0


def test_no_images_and_missing_model_are_errors(workdir, images, capsys):
    empty = workdir / "empty"
    empty.mkdir()
    assert main(["predict", "--model", "model.pt", "--images", str(empty), "--out", "o"]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["predict", "--model", "nope.pt", "--images", str(images), "--out", "o"]) == 2
    assert "nope.pt: model checkpoint not found" in capsys.readouterr().err


def test_loads_a_logged_model_by_runs_uri_without_running_its_code(workdir, images, tiny_model, mlflow_uri,
                                                                    monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.serving.config import ServingConfig
    from pipeline.serving.export import log_detector_model

    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("t", artifact_location=str(workdir / "mlruns"))
    run_id = client.create_run(experiment_id).info.run_id
    log_detector_model({"run_id": run_id, "tracking_uri": mlflow_uri}, tiny_model, config=ServingConfig(40, 60))
    # only the checkpoint is read: the model's code (copied into the model folder) never runs
    monkeypatch.setattr("pipeline.serving.model.DetectorModel.load_context",
                        lambda *a: pytest.fail("predict must not load the pyfunc model"))
    code = main(["predict", "--model", f"runs:/{run_id}/model", "--images", str(images / "a.png"), "--out", "o",
                 "--set", f"mlflow.tracking_uri={mlflow_uri}", *RESIZE, *LOCAL])
    assert code == 0
    rows, summary = _outputs(workdir / "o")
    assert summary["categories"][1]["name"] == "square" and [row["file_name"] for row in rows] == ["a.png"]
    assert main(["predict", "--model", "models:/no-such-model/1", "--images", str(images / "a.png"), "--out", "o",
                 "--set", f"mlflow.tracking_uri={mlflow_uri}"]) == 2


def test_an_exif_rotated_photo_gives_boxes_in_the_frame_the_user_sees(workdir, monkeypatch, corrupt_jpeg):
    """A phone photo stored 120x80 with EXIF orientation 6 is shown 80x120: the model sees it upright,
    the boxes and the image record are in that frame; a corrupt file is tolerated
    (data.max_bad_fraction=0.5), listed, and the command succeeds."""
    model = FixedBoxDetector()
    monkeypatch.setattr("detector.load_checkpoint", lambda path, map_location="cpu": model)
    (workdir / "model.pt").write_bytes(b"not used")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((80, 120, 3), np.uint8)).save(workdir / "phone.jpg", exif=exif.tobytes())
    corrupt_jpeg(workdir / "bad.jpg")
    code = main(["predict", "--model", "model.pt", "--images", "phone.jpg", "bad.jpg", "--out", "o",
                 "--set", "data.resize.min_size=80", "--set", "data.resize.max_size=120",
                 "--set", "data.max_bad_fraction=0.5", *LOCAL])
    assert code == 0
    assert model.sizes == [(120, 80)]  # (h, w): upright
    (row,) = [json.loads(line) for line in (workdir / "o" / "predictions.jsonl").read_text().splitlines()]
    assert (row["width"], row["height"]) == (80, 120)
    assert row["detections"][0]["bbox"] == [10.0, 5.0, 20.0, 20.0]  # in the upright frame, unscaled
    summary = json.loads((workdir / "o" / "summary.json").read_text())
    assert [Path(f["path"]).name for f in summary["skipped"]] == ["bad.jpg"]
    assert "broken data stream" in summary["skipped"][0]["error"]


def test_the_cluster_drivers_modules_do_not_import_torch():
    """What ``predict`` runs in the driver on the cluster (its CLI, Ray Data's driver side, the checkpoint's
    bytes, the overlays) imports no torch: ~0.7 GB of RSS that a CPU-only head node does not need."""
    import subprocess
    import sys

    code = ("import sys, pipeline.cli, pipeline.predict, pipeline.evaluation.batch_inference, pipeline.driver.cluster, "
            "pipeline.inference.loading, pipeline.inference.images, pipeline.evaluation.pictures, "
            "pipeline.tracking.uri; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]", out

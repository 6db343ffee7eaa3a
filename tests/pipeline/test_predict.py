"""The ``predict`` command: a real tiny checkpoint, corrupt files, boxes in original pixels, MLflow URIs."""

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


def test_corrupt_files_are_reported_and_the_others_written(workdir, images, tiny_model, capsys):
    from detector import save_checkpoint

    save_checkpoint(workdir / "model.pt", tiny_model)
    code = main(["predict", "--model", "model.pt", "--images", str(images), "--out", "out",
                 "--score-threshold", "0", *RESIZE])
    assert code == 1
    err = capsys.readouterr().err
    assert "corrupt.jpg" in err and "truncated.png" in err and "2 of 4 files could not be read" in err
    assert "notes.txt" not in err

    out = json.loads((workdir / "out" / "detections.json").read_text())
    assert [image["file_name"] for image in out["images"]] == ["a.png", "b.jpg"]
    assert [(image["height"], image["width"]) for image in out["images"]] == [(80, 120), (60, 60)]
    assert sorted(Path(f["path"]).name for f in out["failed"]) == ["corrupt.jpg", "truncated.png"]
    assert out["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    sizes = {image["id"]: (image["height"], image["width"]) for image in out["images"]}
    assert out["annotations"], "an untrained model still scores every class at ~1/3"
    for det in out["annotations"]:
        h, w = sizes[det["image_id"]]
        x, y, bw, bh = det["bbox"]
        assert -0.01 <= x and x + bw <= w + 0.01 and -0.01 <= y and y + bh <= h + 0.01
        assert det["category_name"] == CLASSES[det["category_id"] - 1]
    for image in out["images"]:  # the image at its own size, a legend strip below
        rendered = Image.open(workdir / "out" / image["rendered"])
        assert rendered.width == image["width"] and rendered.height > image["height"]


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
                 *RESIZE])
    assert code == 1 and "missing.png" in capsys.readouterr().err
    assert model.sizes == [(40, 60)]  # 80x120 resized with min_size=40, max_size=60
    out = json.loads((workdir / "o" / "detections.json").read_text())
    (det,) = out["annotations"]
    assert det["bbox"] == [20.0, 10.0, 40.0, 40.0] and det["category_name"] == "square"
    assert det["file_name"] == "a.png" and det["score"] == pytest.approx(0.8)

    assert main(["predict", "--model", "model.pt", "--images", str(images / "a.png"), "--out", "o2", *RESIZE]) == 0


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
                 "--set", f"mlflow.tracking_uri={mlflow_uri}", *RESIZE])
    assert code == 0
    out = json.loads((workdir / "o" / "detections.json").read_text())
    assert out["categories"][1]["name"] == "square" and [i["file_name"] for i in out["images"]] == ["a.png"]
    assert main(["predict", "--model", "models:/no-such-model/1", "--images", str(images / "a.png"), "--out", "o",
                 "--set", f"mlflow.tracking_uri={mlflow_uri}"]) == 2

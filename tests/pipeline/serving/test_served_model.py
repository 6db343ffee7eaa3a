"""The registered MLflow model end to end: registry tags and alias, ``mlflow models serve``,
``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` and ``predict --model models:/...``, all
against the detections of ``detector.load_checkpoint`` on the same image.

One module, one registry, one server start (serving starts in ~10-60 s on 2 busy cores).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

CLASSES = ["circle", "square"]
NAME, ALIAS = "tiny-frcnn", "latest-train"
MIN_SIZE, MAX_SIZE = 40, 60  # a 120x80 image is seen at 60x40: boxes come back x2
BIN = Path(sys.executable).parent


def _reference(model, data: bytes) -> list[dict]:
    """Detections the plain way: PIL decode, resize to the training scale, model, boxes x (orig / resized)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    scale = min(MIN_SIZE / min(h, w), MAX_SIZE / max(h, w))
    rw, rh = round(w * scale), round(h * scale)
    pixels = np.asarray(image.resize((rw, rh), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    with torch.inference_mode():
        (out,) = model([torch.from_numpy(pixels).permute(2, 0, 1).contiguous()])
    boxes = out["boxes"] * torch.tensor([w / rw, h / rh, w / rw, h / rh])
    return [{"box": b, "score": s, "label": int(lab)}
            for b, s, lab in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist())]


def _assert_same(found: list[dict], expected: list[dict]) -> None:
    """Same detections up to output rounding (boxes 2 decimals, scores 5) and ties in the order."""
    assert expected, "the reference model must detect something for the comparison to mean anything"
    assert len(found) == len(expected)
    unused = list(found)
    for det in expected:
        match = next((f for f in unused if f["label"] == det["label"] and abs(f["score"] - det["score"]) < 1e-4
                      and max(abs(a - b) for a, b in zip(f["box"], det["box"])) < 0.02), None)
        assert match is not None, f"no match for {det} in {unused}"
        unused.remove(match)


def _rows_to_dets(row: dict) -> list[dict]:
    assert row["class_names"] == [CLASSES[label - 1] for label in row["labels"]]
    return [{"box": list(b), "score": s, "label": lab} for b, s, lab in zip(row["boxes"], row["scores"], row["labels"])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_registry_serving_and_pyfunc_give_the_checkpoints_detections(tmp_path, sqlite_store, monkeypatch, shapes_image,
                                                                     stop_server):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    import detector
    from pipeline.cli import main
    from pipeline.serving.config import ServingConfig
    from pipeline.serving.registry import register_version
    from pipeline.tracking import mlflow_runs as tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("serving", artifact_location=(tmp_path / "mlruns").as_uri())
    config = detector.DetectorConfig.from_dict(
        {"backbone": "mobilenet_v3_large", "fpn_channels": 16, "roi": {"head_dim": 32},
         "rpn": {"pre_nms_topk_test": 100, "post_nms_topk_test": 50}}, num_classes=2, class_names=CLASSES)
    torch.manual_seed(0)
    model = detector.build_model(config).eval()
    detector.save_checkpoint(tmp_path / "model.pt", model)
    reference_model = detector.load_checkpoint(tmp_path / "model.pt")
    serving = ServingConfig(min_size=MIN_SIZE, max_size=MAX_SIZE)

    def training_run(tags):
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        return tracking.MlflowRun(run_id=run_id, tracking_uri=uri, experiment_id=experiment_id)

    # --- a training that ran: version 1, tagged, alias on it
    ran = training_run({"git_commit": "0123abc", "dvc_exp_name": "exp-serving", "params_hash": "cafe"})
    model_uri = tracking.log_final(ran, model=model, artifacts=[], log_model=True, registered_model_name=NAME,
                                   alias=ALIAS, serving=serving, val_metrics={"AP": 0.25, "AP50": 0.5, "loss": 1.0})
    assert model_uri == f"models:/{NAME}/1"
    version = client.get_model_version_by_alias(NAME, ALIAS)
    assert str(version.version) == "1" and version.run_id == ran["run_id"]
    assert version.tags == {"git_commit": "0123abc", "dvc_exp_name": "exp-serving", "params_hash": "cafe",
                            "val_AP": "0.2500", "val_AP50": "0.5000"}
    assert "base64" in client.get_registered_model(NAME).description  # the request format, for the UI
    assert client.get_run(ran["run_id"]).info.status == "FINISHED"

    # --- a training that did not run (e.g. a reused finished run): logged, no new version, alias stays
    reused = training_run({"git_commit": "0123abc"})
    logged_uri = tracking.log_final(reused, model=model, artifacts=[], log_model=True, registered_model_name=NAME,
                                    alias=ALIAS, serving=serving, val_metrics={}, register=False)
    assert logged_uri.startswith("models:/m-")
    assert [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")] == ["1"]
    assert str(client.get_model_version_by_alias(NAME, ALIAS).version) == "1"
    # the next training's version takes the alias
    ref = register_version(uri, name=NAME, model_uri=logged_uri, model_id=logged_uri.removeprefix("models:/"),
                           run_id=reused["run_id"], alias=ALIAS, tags={})
    assert str(ref["version"]) == "2" and str(client.get_model_version_by_alias(NAME, ALIAS).version) == "2"

    # --- `mlflow models serve` of models:/NAME@ALIAS, started now, queried once it is up
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@{ALIAS}",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        jpeg, png = shapes_image("JPEG", (120, 80), 0), shapes_image("PNG", (90, 70), 1)
        expected = [_reference(reference_model, data) for data in (jpeg, png)]

        # --- pyfunc from the registry alias: one row per image, original pixels, class names
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@{ALIAS}")
        for data, want in zip((jpeg, png), expected):  # one image per call: the reference's batch of one
            (row,) = pyfunc.predict(pd.DataFrame({"image": [data]})).to_dict("records")
            _assert_same(_rows_to_dets(row), want)
        rows = pyfunc.predict(pd.DataFrame({"image": [jpeg, png]}), params={"score_threshold": 0.5}).to_dict("records")
        assert [(r["width"], r["height"]) for r in rows] == [(120, 80), (90, 70)]
        assert all(s >= 0.5 for r in rows for s in r["scores"])
        monkeypatch.delenv("MLFLOW_TRACKING_URI")

        # --- `predict --model models:/NAME@ALIAS` (tracking URI from the params)
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "photo.jpg").write_bytes(jpeg)
        shutil.copy(Path(__file__).resolve().parents[3] / "params.yaml", tmp_path / "params.yaml")
        assert main(["predict", "--model", f"models:/{NAME}@{ALIAS}", "--images", "in", "--out", "out",
                     "--score-threshold", "0", "--set", f"mlflow.tracking_uri={uri}",
                     "--set", f"data.resize.min_size={MIN_SIZE}", "--set", f"data.resize.max_size={MAX_SIZE}"]) == 0
        (row,) = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
        predicted = row["detections"]
        _assert_same([{"box": [x, y, x + w, y + h], "score": d["score"], "label": d["category_id"]}
                      for d in predicted for x, y, w, h in [d["bbox"]]], expected[0])

        # --- the server answers POST /invocations like the pyfunc model
        deadline = time.monotonic() + 600  # generous: torch + mlflow imports on 2 busy cores
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(jpeg).decode()]]}}
        status, answer = _post(f"http://127.0.0.1:{port}/invocations", body)
        assert status == 200, answer
        (served,) = answer["predictions"]
        assert (served["width"], served["height"]) == (120, 80)
        _assert_same(_rows_to_dets(served), expected[0])
        status, answer = _post(f"http://127.0.0.1:{port}/invocations",
                               {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(jpeg).decode()],
                                                                                   ["bm90IGFuIGltYWdl"]]}})
        assert status == 400 and "row 1 of column 'image' is not an encoded image" in answer["message"]
    finally:
        stop_server(server, log, timeout=30)

"""A tiny detector logged and registered as the served model, in an MLflow store of its own."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

NAME, ALIAS = "tiny-frcnn", "latest-train"
CLASSES = ["circle", "square"]


@dataclass(frozen=True)
class RegisteredModel:
    tracking_uri: str   # sqlite:///.../mlflow.db (artifacts in a folder next to it)
    model_uri: str      # models:/NAME@ALIAS
    image: bytes        # a PNG the model detects something in


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (120, 80), seed: int = 0) -> bytes:
    """An encoded noisy image with a red rectangle and a blue ellipse (what the tiny models detect)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(60, 200, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 8, 50, 40), fill=(220, 30, 30))
    draw.ellipse((60, 20, 100, 70), fill=(30, 30, 220))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def shapes_image():
    """:func:`image_bytes` (test modules cannot import conftest reliably)."""
    return image_bytes


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory, sqlite_store) -> RegisteredModel:
    """A mobilenet-backbone detector (random weights, seed 0) logged by training's own
    ``log_detector_model`` and registered as ``models:/tiny-frcnn@latest-train``."""
    import torch
    from mlflow.tracking import MlflowClient

    import detector
    from pipeline.serving.config import ServingConfig
    from pipeline.serving.export import log_detector_model

    root = tmp_path_factory.mktemp("served-model")
    uri = sqlite_store(root)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("serving", artifact_location=Path(root / "mlruns").as_uri())
    config = detector.DetectorConfig.from_dict(
        {"backbone": "mobilenet_v3_large", "fpn_channels": 16, "roi": {"head_dim": 32},
         "rpn": {"pre_nms_topk_test": 100, "post_nms_topk_test": 50}}, num_classes=2, class_names=CLASSES)
    torch.manual_seed(0)
    model = detector.build_model(config).eval()
    run_id = client.create_run(experiment_id).info.run_id
    logged = log_detector_model({"run_id": run_id, "tracking_uri": uri}, model,
                                config=ServingConfig(min_size=40, max_size=60), registered_model_name=NAME,
                                alias=ALIAS)
    client.set_terminated(run_id)
    assert logged["registered"] is not None
    return RegisteredModel(tracking_uri=uri, model_uri=f"models:/{NAME}@{ALIAS}", image=image_bytes())

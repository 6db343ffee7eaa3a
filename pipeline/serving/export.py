"""Log the servable pyfunc model into a training's MLflow run, and register it.

The logged model holds:

- ``artifacts/model.pt``: the weights as a ``detector`` checkpoint (``weights_only``-safe),
- ``python_model.py``: :mod:`pipeline.serving.model_code` (models-from-code: nothing is pickled),
- ``code/detector`` and ``code/pipeline``: the code that defines the model and its preprocessing,
- ``requirements.txt`` (and ``python_env.yaml``, ``conda.yaml``): the distributions that code imports,
  pinned to the versions installed here (:mod:`pipeline.serving.requirements`),
- the signature (``image`` binary column in; boxes, scores, labels, class names out; the
  ``score_threshold`` request param), an input example, and the ``ServingConfig`` as ``model_config``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.environ import env_restored
from pipeline.serving.config import CHECKPOINT_ARTIFACT, ServingConfig
from pipeline.serving.registry import register_version
from pipeline.serving.requirements import requirements

__all__ = ["LoggedModel", "log_detector_model", "input_example", "signature"]


class LoggedModel(dict):
    """``{"model_uri", "registered"}``: the logged model's URI (``models:/m-...``) and the
    :class:`ModelVersionRef` of its registry version (None when not registered)."""


def log_detector_model(run: Mapping[str, str], model: Any, *, config: ServingConfig,
                       registered_model_name: str | None = None, alias: str | None = None, register: bool = True,
                       version_tags: Mapping[str, str] | None = None) -> LoggedModel:
    """Log ``model`` (a ``detector.FasterRCNN``) as a pyfunc model named ``model`` into ``run``.

    Args:
        run: ``{"run_id", "tracking_uri"}`` of the training's MLflow run.
        config: the :class:`ServingConfig` (the training resize, default score threshold, ...).
        registered_model_name: register a version under this name (None: only log the model).
        alias: registry alias moved to the new version (e.g. ``latest-train``); None: no alias.
        register: False for a training that did not run (e.g. a finished run reused as is):
            the model is logged but no version is created and no alias moves.
        version_tags: tags of the new version (git commit, DVC experiment, val metrics, ...).
    """
    import mlflow
    import mlflow.pyfunc

    import detector
    import pipeline
    from pipeline.serving import model_code

    with tempfile.TemporaryDirectory(prefix="detector-model-") as tmp:
        checkpoint = Path(tmp) / "model.pt"
        detector.save_checkpoint(checkpoint, model.cpu().eval())
        with _tracking_uri(run["tracking_uri"]), _quiet_mlflow_logging():
            # nested: a Tune trial may already have its own run active in this process
            with mlflow.start_run(run_id=run["run_id"], nested=mlflow.active_run() is not None):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=model_code.__file__,
                    artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
                    code_paths=[str(Path(detector.__file__).parent), str(Path(pipeline.__file__).parent)],
                    signature=signature(config.score_threshold), input_example=input_example(),
                    model_config=config.to_dict(), pip_requirements=requirements(),
                )
            registered = None
            if registered_model_name and register:
                registered = register_version(
                    run["tracking_uri"], name=registered_model_name, model_uri=info.model_uri,
                    model_id=info.model_id, run_id=run["run_id"], alias=alias, tags=dict(version_tags or {}))
    return LoggedModel(model_uri=info.model_uri, registered=registered)


def signature(score_threshold: float) -> Any:
    """Input: an ``image`` binary column; output: one row of detections per image; param: the threshold."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema([ColSpec(Array(Array(DataType.double)), "boxes"), ColSpec(Array(DataType.double), "scores"),
                        ColSpec(Array(DataType.long), "labels"), ColSpec(Array(DataType.string), "class_names"),
                        ColSpec(DataType.long, "width"), ColSpec(DataType.long, "height")]),
        params=ParamSchema([ParamSpec("score_threshold", DataType.double, float(score_threshold))]),
    )


def input_example() -> Any:
    """A one-row request: a small PNG (a grey square with a dark rectangle) as bytes."""
    import pandas as pd
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), (180, 180, 180))
    ImageDraw.Draw(image).rectangle((16, 12, 44, 36), fill=(40, 40, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API with ``uri``, then exactly what was there before (``set_tracking_uri``
    also exports ``MLFLOW_TRACKING_URI``, and ``get_tracking_uri()`` would turn "unset" into a default)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    with env_restored("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def _quiet_mlflow_logging() -> Iterator[None]:
    """No INFO lines ("Validating input example ...") nor artifact progress bars while logging the model."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    with env_restored(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(level)


"""Load a detector from a checkpoint path or an MLflow model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is built: the batch-inference driver never does
    import torch
    from torch import nn

MLFLOW_SCHEMES = ("models:/", "runs:/")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as given."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(ref: str | Path, *, tracking_uri: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The detector at ``ref``, in eval mode on ``device``, batch norm fused for inference.

    ``ref`` is a ``detector`` checkpoint file (``models/model.pt``) or an MLflow model URI
    (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``) of a model logged by
    training (:mod:`pipeline.serving`), read from ``tracking_uri`` (which must then be given). Only
    its checkpoint is read (``weights_only=True``): no code from the model store runs.
    """
    import detector

    with _checkpoint_file(ref, tracking_uri) as checkpoint:
        model = detector.load_checkpoint(checkpoint, map_location=device)
    return _for_inference(model, device)


def checkpoint_bytes(ref: str | Path, *, tracking_uri: str | None = None) -> bytes:
    """The checkpoint file behind ``ref`` (as :func:`load_model` resolves it), unread by torch: what the
    batch-inference driver ships to its replicas, which build the model (:func:`model_from_bytes`)."""
    with _checkpoint_file(ref, tracking_uri) as checkpoint:
        return checkpoint.read_bytes()


def model_from_bytes(data: bytes, device: str | torch.device = "cpu") -> nn.Module:
    """:func:`load_model` of a checkpoint's bytes (:func:`checkpoint_bytes`)."""
    import detector

    with tempfile.TemporaryDirectory(prefix="checkpoint-") as tmp:
        path = Path(tmp) / "model.pt"
        path.write_bytes(data)
        model = detector.load_checkpoint(path, map_location=device)
    return _for_inference(model, device)


def _for_inference(model: nn.Module, device: str | torch.device) -> nn.Module:
    model = model.to(device).eval()
    fuse = getattr(model, "fuse_for_inference", None)
    return fuse() if fuse is not None and not model.fused else model


@contextlib.contextmanager
def _checkpoint_file(ref: str | Path, tracking_uri: str | None) -> Iterator[Path]:
    """The local checkpoint file of ``ref`` (downloaded into a temporary folder for an MLflow URI)."""
    ref = str(ref)
    if ref.startswith(MLFLOW_SCHEMES):
        if tracking_uri is None:
            raise ValueError(f"{ref}: an MLflow model URI needs a tracking URI")
        with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
            yield _download_checkpoint(ref, tracking_uri, Path(tmp))
        return
    if not Path(ref).is_file():
        raise FileNotFoundError(f"{ref}: model checkpoint not found (train one with `python -m pipeline "
                                "train`, or pass an MLflow URI like models:/NAME@ALIAS)")
    yield Path(ref)


def _download_checkpoint(ref: str, tracking_uri: str, dst: Path) -> Path:
    """Download the MLflow model ``ref`` into ``dst``; the path of its ``detector`` checkpoint artifact."""
    import mlflow.artifacts
    import yaml

    from pipeline.serving.config import CHECKPOINT_ARTIFACT

    try:  # explicit URIs instead of setting MLflow's process-wide tracking URI
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(dst), tracking_uri=tracking_uri,
                                                         registry_uri=tracking_uri))
    except Exception as err:  # noqa: BLE001 - MLflow raises many types; say which model failed
        raise ValueError(f"{ref}: could not download the model from MLflow at {tracking_uri} "
                         f"({err.__class__.__name__}: {err})") from err
    try:
        flavors = yaml.safe_load((local / "MLmodel").read_text())["flavors"]
        checkpoint = local / flavors["python_function"]["artifacts"][CHECKPOINT_ARTIFACT]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise ValueError(f"{ref}: not a model logged by this pipeline's training (no {CHECKPOINT_ARTIFACT!r} "
                         f"artifact in its MLmodel: {err!r}); models logged with the older pickle format can "
                         "only be loaded with mlflow.pytorch.load_model, which runs their pickled code") from None
    return checkpoint


def class_names_of(model: nn.Module) -> dict[int, str]:
    """Label -> class name (labels are 1..C, ``class_names[label - 1]``); ``class_<label>`` if unknown."""
    names = getattr(model, "class_names", None) or []
    num = getattr(model, "num_classes", None) or len(names)
    return {i + 1: (names[i] if i < len(names) else f"class_{i + 1}") for i in range(num)}

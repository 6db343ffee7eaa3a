"""Load a detector from a checkpoint path or an MLflow model URI (``models:/NAME/VERSION``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MLFLOW_SCHEMES = ("models:/", "runs:/")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(ref: str | Path, *, tracking_uri: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The detector at ``ref``, in eval mode on ``device``, batch norm fused for inference.

    ``ref`` is a ``detector`` checkpoint file (``models/model.pt``) or an MLflow model URI
    (``models:/NAME/VERSION``, ``models:/NAME@alias``, ``runs:/RUN_ID/PATH``), loaded with
    ``mlflow.pytorch.load_model`` from ``tracking_uri`` (which must then be given).
    """
    ref = str(ref)
    if ref.startswith(MLFLOW_SCHEMES):
        if tracking_uri is None:
            raise ValueError(f"{ref}: an MLflow model URI needs a tracking URI")
        import tempfile

        import mlflow.artifacts
        import mlflow.pytorch

        try:  # download with explicit URIs instead of setting MLflow's process-wide tracking URI
            with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
                local = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp, tracking_uri=tracking_uri,
                                                            registry_uri=tracking_uri)
                model = mlflow.pytorch.load_model(local, map_location=torch.device(device))
        except Exception as err:  # noqa: BLE001 - MLflow raises many types; say which model failed
            raise ValueError(f"{ref}: could not load the model from MLflow at {tracking_uri} "
                             f"({err.__class__.__name__}: {err})") from err
    else:
        import detector

        if not Path(ref).is_file():
            raise FileNotFoundError(f"{ref}: model checkpoint not found (train one with `python -m pipeline "
                                    "train`, or pass an MLflow URI like models:/NAME/VERSION)")
        model = detector.load_checkpoint(ref, map_location=device)
    model = model.to(device).eval()
    fuse = getattr(model, "fuse_for_inference", None)
    return fuse() if fuse is not None and not model.fused else model


def class_names_of(model: nn.Module) -> dict[int, str]:
    """Label -> class name (labels are 1..C, ``class_names[label - 1]``); ``class_<label>`` if unknown."""
    names = getattr(model, "class_names", None) or []
    num = getattr(model, "num_classes", None) or len(names)
    return {i + 1: (names[i] if i < len(names) else f"class_{i + 1}") for i in range(num)}

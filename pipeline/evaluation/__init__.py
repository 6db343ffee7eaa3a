"""Evaluation of a detector on a COCO-format split: inference, COCO metrics, PR curves, pictures.

``evaluate_model`` is what the ``train`` stage calls for periodic validation AP; the ``evaluate``
stage (``pipeline/evaluate.py``) and the ``predict`` command build on the same pieces. Loading a
model and detecting on images (what the served model needs too) is :mod:`pipeline.inference`,
which imports none of this package's metrics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.evaluation.inference import InferenceTiming, run_inference, to_coco_results
from pipeline.evaluation.metrics import STAT_NAMES, coco_metrics, load_coco, per_class_ap, pr_curves

__all__ = [
    "STAT_NAMES",
    "InferenceTiming",
    "coco_metrics",
    "evaluate_model",
    "load_coco",
    "per_class_ap",
    "pr_curves",
    "run_inference",
    "to_coco_results",
]


def evaluate_model(model: nn.Module, dataset: Any, *, batch_size: int = 8, device: str | torch.device = "cpu",
                   score_threshold: float = 0.05, progress: bool = False) -> dict[str, Any]:
    """COCO box metrics of ``model`` on ``dataset`` (a ``CocoDetectionDataset``).

    ``model`` is a plain detector (unwrap DDP first) already on ``device``; its train/eval mode is
    restored afterwards. Returns ``coco_metrics``' dict (``AP``, ``AP50``, ``AP75``, ...,
    ``AP_per_class``) plus ``images_per_s`` and ``ms_per_image``.
    """
    timing = InferenceTiming()
    detections = run_inference(model, dataset, batch_size=batch_size, device=device,
                               score_threshold=score_threshold, progress=progress, timing=timing)
    metrics, _ = coco_metrics(dataset.coco_json_path, detections)
    return {**metrics, **timing.as_metrics()}

"""Evaluation of a detector on a COCO-format split: inference, COCO metrics, PR curves, pictures.

``evaluate_model`` is what the ``train`` stage calls for periodic validation AP; the ``evaluate``
stage (``pipeline/evaluate.py``) and the ``predict`` command build on the same pieces. Loading a
model and detecting on images (what the served model needs too) is :mod:`pipeline.inference`,
which imports none of this package's metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.evaluation.metrics import STAT_NAMES, coco_metrics, load_coco, per_class_ap, pr_curves

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.evaluation.inference import InferenceTiming, run_inference, to_coco_results

__all__ = [
    "STAT_NAMES",
    "InferenceTiming",
    "coco_metrics",
    "evaluate_model",
    "load_coco",
    "per_class_ap",
    "pr_curves",
    "run_inference",
    "shard_indices",
    "to_coco_results",
]


def evaluate_model(model: nn.Module, dataset: Any, *, batch_size: int = 8, device: str | torch.device = "cpu",
                   score_threshold: float = 0.05, progress: bool = False) -> dict[str, Any]:
    """COCO box metrics of ``model`` on ``dataset`` (a ``CocoDetectionDataset``).

    ``model`` is a plain detector (unwrap DDP first) already on ``device``; its train/eval mode is
    restored afterwards. When a ``torch.distributed`` process group of several ranks is initialised,
    every rank must call this: each infers its shard of ``dataset`` (:func:`shard_indices`: every image
    once), the detections are gathered to rank 0, which alone computes the metrics (the other ranks
    get ``{}``); the model must be the same on every rank. Returns ``coco_metrics``' dict (``AP``,
    ``AP50``, ``AP75``, ..., ``AP_per_class``) plus ``images_per_s`` and ``ms_per_image`` (per rank)
    and ``excluded_images`` (files that could not be decoded: left out of the metrics, logged).
    """
    import logging

    import torch.distributed as dist
    from torch.utils.data import Subset

    from pipeline.evaluation.inference import InferenceTiming, run_inference

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    shard = dataset if world == 1 else Subset(dataset, shard_indices(len(dataset), rank, world))
    timing, skipped = InferenceTiming(), []
    detections = run_inference(model, shard, batch_size=batch_size, device=device,
                               score_threshold=score_threshold, progress=progress, timing=timing, skipped=skipped)
    if world > 1:
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object((detections, timing.images, timing.seconds, skipped), gathered, dst=0)
        if rank != 0:
            return {}
        detections = [det for part in gathered for det in part[0]]
        skipped = [bad for part in gathered for bad in part[3]]
        timing = InferenceTiming(images=sum(part[1] for part in gathered), seconds=sum(part[2] for part in gathered))
    metrics, _ = coco_metrics(dataset.coco_json_path, detections, exclude_image_ids=[s["image_id"] for s in skipped])
    for bad in skipped:
        logging.getLogger(__name__).warning(f"evaluation leaves out {bad['file']}: {bad['error']}")
    return {**metrics, **timing.as_metrics(), "excluded_images": len(skipped)}


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The items of ``rank`` of ``world`` out of ``n``: every ``world``-th from ``rank``, so each item is on
    exactly one rank (unlike ``DistributedSampler``, which pads with repeats to equal shard sizes)."""
    return list(range(rank, n, world))


def __getattr__(name: str) -> Any:
    """The inference names are exported lazily (PEP 562): the batch-inference driver
    (:mod:`pipeline.evaluation.batch_inference`, ``predict`` on the cluster) and the metrics do not
    import torch (~0.7 GB of RSS) through this package. The import is a statement so that the run
    identity's import graph sees it."""
    if name in ("InferenceTiming", "run_inference", "to_coco_results"):
        from pipeline.evaluation import inference as found
    else:
        raise AttributeError(f"module 'pipeline.evaluation' has no attribute {name!r}")
    value = getattr(found, name)
    globals()[name] = value
    return value

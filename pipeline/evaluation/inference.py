"""Batched inference over a detection dataset, with boxes mapped back to original image pixels.

Shapes: ``N`` detections of one image; boxes are ``(N, 4)`` xyxy unless they say xywh.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.inference.detection import rescale_boxes


@dataclass
class InferenceTiming:
    """Model forward time accumulated over a run (data loading and post-processing excluded)."""

    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / self.images if self.images else 0.0

    def as_metrics(self) -> dict[str, float]:
        return {"images_per_s": round(self.images_per_s, 3), "ms_per_image": round(self.ms_per_image, 3)}


def to_coco_results(output: dict[str, Tensor], image_id: int, *, input_hw: Sequence[int],
                    orig_hw: Sequence[int], score_threshold: float = 0.0) -> list[dict[str, Any]]:
    """One image's model output as COCO result dicts (xywh in original pixels).

    Args:
        output: ``{"boxes": (N, 4) xyxy in input pixels, "scores": (N,), "labels": (N,)}``.
        input_hw: ``(h, w)`` of the tensor the model saw; ``orig_hw``: of the original image.
    """
    keep = output["scores"] >= score_threshold
    boxes = rescale_boxes(output["boxes"][keep].float().cpu(), input_hw, orig_hw)  # (N, 4) xyxy
    boxes[:, 2:] -= boxes[:, :2]  # -> xywh
    scores = output["scores"][keep].tolist()
    labels = output["labels"][keep].tolist()
    return [
        {"image_id": int(image_id), "category_id": int(label),
         "bbox": [round(v, 2) for v in box], "score": round(score, 5)}
        for box, score, label in zip(boxes.tolist(), scores, labels)
    ]


def run_inference(model: nn.Module, dataset: Any, *, batch_size: int = 8, device: str | torch.device = "cpu",
                  score_threshold: float = 0.05, progress: bool = False,
                  timing: InferenceTiming | None = None, skipped: list[dict[str, Any]] | None = None
                  ) -> list[dict[str, Any]]:
    """Detections for every item of ``dataset`` in the COCO results format.

    Args:
        model: a detector taking ``list[(3, H, W)]`` and returning per-image
            ``{"boxes", "scores", "labels"}``; it must already be on ``device``. Its train/eval
            mode is restored afterwards.
        dataset: map-style, items ``(image (3, H, W), target)`` with ``target["image_id"]`` and
            ``target["orig_size"]`` ``(h, w)``; boxes are mapped from the image tensor's size to that.
        progress: show a tqdm bar on stderr.
        timing: if given, accumulates the model's forward time.
        skipped: if given, receives ``{"image_id", "file", "error"}`` of each item whose file could not
            be decoded (an item ``(None, {"image_id", "bad_images"})``, see
            :class:`pipeline.data.dataset.CocoDetectionDataset`); such items are left out.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` for scores >= threshold.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_as_lists)
    device = torch.device(device)
    results: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(dataset), desc="inference", unit="img", file=sys.stderr,
                                          disable=not progress, dynamic_ncols=True) as bar:
            for images, targets in loader:
                bar.update(len(images))
                images, targets = _decoded(images, targets, skipped)
                if not images:
                    continue
                images = [image.to(device) for image in images]
                start = time.perf_counter()
                outputs = model(images)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if timing is not None:
                    timing.seconds += time.perf_counter() - start
                    timing.images += len(images)
                for image, output, target in zip(images, outputs, targets):
                    results += to_coco_results(output, _as_int(target["image_id"]), input_hw=image.shape[-2:],
                                               orig_hw=target["orig_size"], score_threshold=score_threshold)
    finally:
        model.train(was_training)
    return results


def _decoded(images: list[Tensor | None], targets: list[dict], skipped: list[dict[str, Any]] | None
             ) -> tuple[list[Tensor], list[dict]]:
    """The batch's decoded items; the others go to ``skipped`` (never dropped silently)."""
    from pipeline.data.dataset import BAD_IMAGES_KEY

    for image, target in zip(images, targets):
        if image is None:
            if skipped is None:
                raise ValueError(f"image {target['image_id']} could not be decoded ({target[BAD_IMAGES_KEY]}) "
                                 "and the caller keeps no list of skipped images")
            skipped += [{"image_id": _as_int(target["image_id"]), **bad} for bad in target[BAD_IMAGES_KEY]]
    kept = [(image, target) for image, target in zip(images, targets) if image is not None]
    return [image for image, _ in kept], [target for _, target in kept]


def _as_lists(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    # Images differ in size: keep them as lists, as the detector's calling convention wants.
    return [item[0] for item in batch], [item[1] for item in batch]


def _as_int(value: Any) -> int:
    return int(value.item()) if isinstance(value, Tensor) else int(value)

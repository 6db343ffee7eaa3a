"""Detections for image files in the COCO results format (the ``predict`` command): read, detect, collect."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from pipeline.evaluation.inference import to_coco_results
from pipeline.inference.detection import detect
from pipeline.inference.images import READ_ERRORS, read_image


@dataclass
class Predictions:
    """COCO-style output: ``images`` read, ``annotations`` (detections, original pixels), ``failed`` files."""

    categories: list[dict[str, Any]]
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "annotations": self.annotations, "categories": self.categories,
                "failed": self.failed}


def predict_images(model: nn.Module, paths: Sequence[Path], *, transforms: Callable, class_names: Mapping[int, str],
                   score_threshold: float = 0.3, batch_size: int = 8, device: str | torch.device = "cpu",
                   on_image: Callable[[dict[str, Any], Image.Image, list[dict[str, Any]]], None] | None = None,
                   progress: bool = False) -> Predictions:
    """Run ``model`` on every readable file of ``paths``; unreadable ones go to ``failed``.

    Args:
        transforms: ``(image, target) -> (tensor (3, h, w), target)``, the evaluation transforms.
        class_names: label -> name, for the ``category_name`` of each detection.
        on_image: called with ``(image record, original PIL image, its detections)`` per image,
            e.g. to render it.
    """
    from tqdm import tqdm

    result = Predictions(categories=[{"id": i, "name": n} for i, n in sorted(class_names.items())])
    model.eval()
    with torch.inference_mode(), tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr,
                                      disable=not progress, dynamic_ncols=True) as bar:
        for batch in _readable_batches(paths, batch_size, result.failed):
            outputs = detect(model, [image for _, image in batch], transforms=transforms, device=device)
            for (record, image), output in zip(batch, outputs):
                dets = to_coco_results(output, record["id"], input_hw=(image.height, image.width),
                                       orig_hw=(image.height, image.width), score_threshold=score_threshold)
                for det in dets:
                    det.update(id=len(result.annotations) + 1, file_name=record["file_name"],
                               category_name=class_names.get(det["category_id"], str(det["category_id"])))
                    result.annotations.append(det)
                result.images.append(record)
                if on_image is not None:
                    on_image(record, image, dets)
            bar.update(len(batch))
        bar.update(len(paths) - bar.n)
    return result


def _readable_batches(paths: Sequence[Path], batch_size: int, failed: list[dict[str, str]]
                      ) -> Iterator[list[tuple[dict[str, Any], Image.Image]]]:
    batch = []
    for image_id, path in enumerate(paths, start=1):
        try:
            image = read_image(path)
        except READ_ERRORS as err:
            failed.append({"path": str(path), "error": f"{err.__class__.__name__}: {err}"})
            continue
        batch.append(({"id": image_id, "file_name": path.name, "path": str(path), "height": image.height,
                       "width": image.width}, image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch

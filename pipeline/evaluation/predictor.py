"""Detections for arbitrary image files: read, resize like training, detect, map back to original pixels."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from pipeline.evaluation.inference import rescale_boxes, to_coco_results

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# What PIL raises for missing, unreadable or corrupt files (PNG chunk errors are SyntaxErrors).
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix) and the image files directly inside given folders, sorted."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)  # a missing file is reported as failed, with the others processed
    return paths


def read_image(path: Path) -> Image.Image:
    """The fully decoded RGB image (decoding now, so a truncated file fails here)."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


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


def detect(model: nn.Module, images: Sequence[Image.Image], *, transforms: Callable,
           device: str | torch.device = "cpu") -> list[dict[str, torch.Tensor]]:
    """The detections of ``model`` (in eval mode, on ``device``) for a batch of RGB images.

    Each image goes through ``transforms`` (the evaluation resize) as in training; the boxes
    come back in that image's original pixels.

    Returns:
        Per image ``{"boxes": (N, 4) xyxy float32, "scores": (N,), "labels": (N,) 1..C}`` on the CPU.
    """
    tensors = [transforms(image, {"boxes": torch.zeros(0, 4)})[0].to(device) for image in images]
    with torch.inference_mode():
        outputs = model(tensors)
    out = []
    for image, tensor, output in zip(images, tensors, outputs):
        boxes = rescale_boxes(output["boxes"].float().cpu(), tensor.shape[-2:], (image.height, image.width))
        out.append({"boxes": boxes, "scores": output["scores"].float().cpu(), "labels": output["labels"].cpu()})
    return out


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

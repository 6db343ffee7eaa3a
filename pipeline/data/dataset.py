"""Load a prepared COCO split for training and evaluation.

``target`` per image (``G`` boxes)::

    boxes     float32 (G, 4) xyxy in the transformed image's pixels
    labels    int64 (G,) in 1..C (= category_id of the prepared JSON)
    iscrowd   int64 (G,) 1 for crowd / VOC-difficult boxes: they stay in the target so
              evaluation can ignore detections on them; the trainer excludes them from the loss
    image_id  int
    orig_size (h, w) of the image file
    size      (h, w) after transforms
    degenerate_boxes  int, with the training recipe only: boxes it removed (under 1 px after a crop,
              zoom-out or resize), their labels and iscrowd removed with them
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from pipeline.data.transforms import to_tensor


class CocoDetectionDataset(Dataset):
    """A COCO JSON (category ids 1..C) and its images.

    Args:
        annotations: the JSON file, e.g. ``data/prepared/train.json``.
        images_dir: folder ``file_name`` is relative to; default the JSON's folder (the
            prepared layout writes ``file_name = images/<split>/<name>``).
        transforms: ``(image, target) -> (image, target)``, e.g.
            :func:`pipeline.data.transforms.build_transforms`; the result is converted to a
            tensor if it is still a PIL image.
    """

    def __init__(self, annotations: str | Path, images_dir: str | Path | None = None,
                 transforms: Callable[[Any, dict], tuple[Any, dict]] | None = None) -> None:
        self.coco_json_path = Path(annotations)
        self.images_dir = Path(images_dir) if images_dir is not None else self.coco_json_path.parent
        self.transforms = transforms
        coco = json.loads(self.coco_json_path.read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        if [c["id"] for c in categories] != list(range(1, len(categories) + 1)):
            raise ValueError(f"{self.coco_json_path}: category ids must be 1..C (run `python -m pipeline prepare`), "
                             f"got {[c['id'] for c in categories]}")
        self.class_names: list[str] = [c["name"] for c in categories]
        self.num_classes = len(self.class_names)
        self._images = {img["id"]: img for img in coco["images"]}
        self.image_ids: list[int] = [img["id"] for img in coco["images"]]
        per_image: dict[int, list[dict]] = {i: [] for i in self.image_ids}
        for ann in coco["annotations"]:
            per_image[ann["image_id"]].append(ann)
        self._targets = {i: _raw_target(anns) for i, anns in per_image.items()}

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self._images[self.image_ids[index]]["file_name"]

    def aspect_ratio(self, index: int) -> float:
        """``width / height`` from the JSON (no decoding), for aspect-ratio batching."""
        img = self._images[self.image_ids[index]]
        return img["width"] / img["height"]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        with Image.open(self.image_path(index)) as file:
            image = file.convert("RGB")
        boxes, labels, iscrowd = self._targets[image_id]
        size = (image.height, image.width)
        target = {"boxes": boxes.clone(), "labels": labels.clone(), "iscrowd": iscrowd.clone(),
                  "image_id": image_id, "orig_size": size, "size": size}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if not isinstance(image, Tensor):
            image = to_tensor(image)
        return image, target


def _raw_target(anns: list[dict]) -> tuple[Tensor, Tensor, Tensor]:
    xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1)  # (G, 4) xywh -> xyxy
    labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    iscrowd = torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64)
    return boxes, labels, iscrowd


def collate_detection(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Keep images of different sizes as a list (the model pads them); targets as a list."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets

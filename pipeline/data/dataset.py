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
    bad_images  (only when files could not be decoded) ``[{"file", "error"}, ...]``: the files this
              item replaced (``on_bad_image="replace"``) or its own file (``"skip"``, image None)

Images are decoded by :func:`pipeline.data.decode.decode_image`: 8-bit RGB, the EXIF orientation
applied by the rule shared with ``prepare`` (the annotated width/height pick the frame).

The split is held in a few flat numpy arrays (:class:`FlatRecords`), not one Python object per
image or box: DataLoader workers forked from the training process read them without writing to
their pages (a Python object's reference count is written on every read), so the pages stay
shared and memory does not grow with the workers or across an epoch (detectron2's
``DatasetFromList(serialize=True)`` does this with one pickled buffer; typed columns need no
unpickling per item). ``benchmarks/bench_dataset_memory.py`` measures it.
"""

from __future__ import annotations

import copy
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from pipeline.data import jsonstream
from pipeline.data.decode import ExifOrientation, decode_or_none
from pipeline.data.errors import BadImageError, TooManyBadImagesError
from pipeline.data.transforms import to_tensor

BAD_IMAGES_KEY = "bad_images"  # target key: the files an item could not decode, [{"file", "error"}]
MAX_REPLACEMENT_TRIES = 64     # consecutive undecodable images before an item gives up
OnBadImage = Literal["replace", "skip", "fail"]


class CocoDetectionDataset(Dataset):
    """A COCO JSON (category ids 1..C) and its images.

    Args:
        annotations: the JSON file, e.g. ``data/prepared/train.json``.
        images_dir: folder ``file_name`` is relative to; default the JSON's folder (the
            prepared layout writes ``file_name = images/<split>/<name>``).
        transforms: ``(image, target) -> (image, target)``, e.g.
            :func:`pipeline.data.transforms.build_transforms`; the result is converted to a
            tensor if it is still a PIL image.
        exif_orientation: ``data.exif_orientation`` (:func:`pipeline.data.decode.orientation_applies`).
        on_bad_image: what an item does when its file cannot be decoded: ``replace`` (training):
            take the next index that decodes (deterministic) and name the skipped files in
            ``target["bad_images"]``; ``skip`` (evaluation): return ``(None, {"image_id",
            "bad_images"})``; ``fail``: raise :class:`BadImageError`.
    """

    def __init__(self, annotations: str | Path, images_dir: str | Path | None = None,
                 transforms: Callable[[Any, dict], tuple[Any, dict]] | None = None, *,
                 exif_orientation: ExifOrientation = "apply", on_bad_image: OnBadImage = "replace") -> None:
        self.coco_json_path = Path(annotations)
        self.images_dir = Path(images_dir) if images_dir is not None else self.coco_json_path.parent
        self.transforms = transforms
        self.exif_orientation, self.on_bad_image = exif_orientation, on_bad_image
        self.records = FlatRecords.read(self.coco_json_path)
        self.class_names: list[str] = self.records.class_names
        self.num_classes = len(self.class_names)

    @property
    def image_ids(self) -> list[int]:
        """The image ids in file order (a new list on each call)."""
        return self.records.image_ids.tolist()

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.records.file_name(index)

    def aspect_ratio(self, index: int) -> float:
        """``width / height`` from the JSON (no decoding), for aspect-ratio batching."""
        return float(self.records.widths[index] / self.records.heights[index])

    def with_transforms(self, transforms: Callable[[Any, dict], tuple[Any, dict]] | None) -> CocoDetectionDataset:
        """The same split with other ``transforms``; the records are shared, not read again."""
        view = copy.copy(self)
        view.transforms = transforms
        return view

    def raw_target(self, index: int) -> dict[str, Any]:
        """``boxes`` (G, 4) xyxy float32, ``labels`` and ``iscrowd`` (G,) int64 as in the JSON (new
        tensors, free to change in place) and ``image_id``: the target before sizes and transforms."""
        return self.records.target(index)

    def annotated_size(self, index: int) -> tuple[int, int]:
        """``(width, height)`` the JSON gives (it picks the EXIF frame, :mod:`pipeline.data.decode`)."""
        return int(self.records.widths[index]), int(self.records.heights[index])

    def __getitem__(self, index: int) -> tuple[Tensor | None, dict[str, Any]]:
        if not -len(self) <= index < len(self):  # (iterating the dataset stops here)
            raise IndexError(f"index {index} out of range for {len(self)} images of {self.coco_json_path}")
        image, index, bad = self._decode(index % len(self))
        if image is None:  # on_bad_image "skip"
            return None, {"image_id": int(self.records.image_ids[index]), BAD_IMAGES_KEY: bad}
        size = (image.height, image.width)
        target = {**self.raw_target(index), "orig_size": size, "size": size}
        if bad:
            target[BAD_IMAGES_KEY] = bad
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if not isinstance(image, Tensor):
            image = to_tensor(image)
        return image, target

    def _decode(self, index: int) -> tuple[Image.Image | None, int, list[dict[str, str]]]:
        """``(image, the index it is of, the files that could not be decoded on the way)``."""
        bad: list[dict[str, str]] = []
        for k in range(min(len(self), MAX_REPLACEMENT_TRIES)):
            i = (index + k) % len(self)
            path = self.image_path(i)
            image, error = decode_or_none(path, exif_orientation_setting=self.exif_orientation,
                                          annotated_size=self.annotated_size(i))
            if image is not None:
                return image, i, bad
            bad.append({"file": str(path), "error": error})
            if self.on_bad_image == "fail":
                raise BadImageError(f"{path} (image {int(self.records.image_ids[i])} of {self.coco_json_path}) cannot be "
                                    f"decoded: {error}; replace or remove the file, or set data.bad_images: skip")
            if self.on_bad_image == "skip":
                return None, index, bad
        listing = "; ".join(f"{b['file']} ({b['error']})" for b in bad)
        raise TooManyBadImagesError(f"{len(bad)} images in a row of {self.coco_json_path} from index {index} "
                                    f"cannot be decoded: {listing}; check the image folder")


@dataclass(frozen=True)
class FlatRecords:
    """A COCO split as flat typed columns: ``I`` images, ``B`` boxes grouped by image.

    The boxes of image ``i`` are rows ``box_start[i]:box_start[i + 1]``, in file order; the file
    name of image ``i`` is ``names[name_start[i]:name_start[i + 1]]`` (UTF-8).
    """

    class_names: list[str]     # (C,) for category ids 1..C
    image_ids: np.ndarray      # (I,) int64
    widths: np.ndarray         # (I,) int64
    heights: np.ndarray        # (I,) int64
    names: np.ndarray          # (sum of name lengths,) uint8: the file names, concatenated
    name_start: np.ndarray     # (I + 1,) int64 offsets into ``names``
    box_start: np.ndarray      # (I + 1,) int64 offsets into the box rows
    boxes: np.ndarray          # (B, 4) float32 xyxy
    labels: np.ndarray         # (B,) int64 category ids
    iscrowd: np.ndarray        # (B,) uint8 0/1

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_name(self, index: int) -> str:
        return self.names[self.name_start[index]:self.name_start[index + 1]].tobytes().decode("utf-8")

    def target(self, index: int) -> dict[str, Any]:
        """Image ``index``'s boxes, labels and iscrowd as new tensors, and its ``image_id``."""
        start, end = int(self.box_start[index]), int(self.box_start[index + 1])
        return {"boxes": torch.from_numpy(self.boxes[start:end].copy()),
                "labels": torch.from_numpy(self.labels[start:end].copy()),
                "iscrowd": torch.from_numpy(self.iscrowd[start:end].astype(np.int64)),
                "image_id": int(self.image_ids[index])}

    @classmethod
    def read(cls, path: Path) -> FlatRecords:
        """Stream ``path`` (:mod:`pipeline.data.jsonstream`: one array element at a time) into columns.

        Raises:
            ValueError: category ids are not 1..C, duplicate image ids, an annotation of a missing
                image, or a bbox that is not four numbers; each names the file.
        """
        columns = _Columns(path)
        try:
            for key, value in jsonstream.top_level(path):
                if key in ("images", "annotations", "categories"):
                    getattr(columns, key)(value)
        except jsonstream.JsonError as err:
            raise ValueError(f"{path}: not valid JSON: {err}; rerun `python -m pipeline prepare`") from err
        return columns.build()

class _Columns:
    """The columns of :class:`FlatRecords` while they are read (typed arrays, 8 bytes a number)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids, self.widths, self.heights, self.name_lengths = array("q"), array("q"), array("q"), array("q")
        self.names = bytearray()
        self.box_image, self.xywh, self.labels, self.iscrowd = array("q"), array("d"), array("q"), array("b")
        self.class_names: list[str] | None = None

    def images(self, value: jsonstream.Value) -> None:
        for img in value.items():
            name = img["file_name"].encode("utf-8")
            self.ids.append(img["id"])
            self.widths.append(img["width"])
            self.heights.append(img["height"])
            self.names += name
            self.name_lengths.append(len(name))

    def annotations(self, value: jsonstream.Value) -> None:
        for ann in value.items():
            bbox = ann["bbox"]
            if len(bbox) != 4:
                raise ValueError(f"{self.path}: annotation id {ann.get('id')}: bbox must be [x, y, w, h], got {bbox}")
            self.box_image.append(ann["image_id"])
            self.xywh.extend(bbox)
            self.labels.append(ann["category_id"])
            self.iscrowd.append(ann.get("iscrowd", 0))

    def categories(self, value: jsonstream.Value) -> None:
        categories = sorted(value.value(), key=lambda c: c["id"])
        if [c["id"] for c in categories] != list(range(1, len(categories) + 1)):
            raise ValueError(f"{self.path}: category ids must be 1..C (run `python -m pipeline prepare`), "
                             f"got {[c['id'] for c in categories]}")
        self.class_names = [c["name"] for c in categories]

    def build(self) -> FlatRecords:
        """Group the boxes by image (file order within an image): ``B`` boxes, ``I`` images."""
        if self.class_names is None:
            raise ValueError(f"{self.path}: no 'categories'; rerun `python -m pipeline prepare`")
        ids = np.frombuffer(self.ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        if len(ids) and (np.diff(ids[order]) == 0).any():
            dup = int(ids[order][np.flatnonzero(np.diff(ids[order]) == 0)[0]])
            raise ValueError(f"{self.path}: duplicate image id {dup}; rerun `python -m pipeline prepare`")
        box_image = np.frombuffer(self.box_image, dtype=np.int64)
        at = np.clip(np.searchsorted(ids[order], box_image), 0, max(len(ids) - 1, 0))
        row = order[at] if len(ids) else np.zeros(len(box_image), dtype=np.int64)  # (B,) image row of each box
        missing = np.flatnonzero(ids[row] != box_image) if len(ids) else np.arange(len(box_image))
        if len(missing):
            raise ValueError(f"{self.path}: an annotation points to image id {int(box_image[missing[0]])}, "
                             "which is not in 'images'; rerun `python -m pipeline prepare`")
        by_image = np.argsort(row, kind="stable")  # (B,) box rows grouped by image, file order kept
        xywh = np.frombuffer(self.xywh, dtype=np.float64).reshape(-1, 4)[by_image].astype(np.float32)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # (B, 4) xywh -> xyxy, float32
        lengths = np.frombuffer(self.name_lengths, dtype=np.int64)
        return FlatRecords(
            class_names=self.class_names, image_ids=ids.copy(), widths=np.frombuffer(self.widths, dtype=np.int64).copy(),
            heights=np.frombuffer(self.heights, dtype=np.int64).copy(),
            names=np.frombuffer(bytes(self.names), dtype=np.uint8), name_start=_offsets(lengths),
            box_start=_offsets(np.bincount(row, minlength=len(ids))), boxes=boxes,
            labels=np.frombuffer(self.labels, dtype=np.int64)[by_image],
            iscrowd=np.frombuffer(self.iscrowd, dtype=np.int8)[by_image].astype(np.uint8))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """``(n + 1,)`` int64 start offsets of ``n`` consecutive runs of ``lengths``."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def collate_detection(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Keep images of different sizes as a list (the model pads them); targets as a list."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets

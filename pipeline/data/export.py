"""Write prepared splits as COCO JSON files that point at the images where they are.

Layout (``out_dir`` is ``data/prepared``)::

    train.json  val.json          COCO: categories 1..C, bbox [x, y, w, h] px, area, iscrowd
    images/train/<name>           only for generated (synthetic) images
    images/val/<name>

``file_name`` in the JSON resolves against the JSON's folder, the way
:class:`pipeline.data.dataset.CocoDetectionDataset` (and ``os.path.join(folder, file_name)``
in any other tool) reads it:

* generated images: ``images/<split>/<name>`` under ``out_dir``;
* COCO / VOC images stay in their source folder and are not copied. A source folder given as
  a relative path (e.g. ``data/raw/coco/train2017``, tracked with ``dvc add``) gives a relative
  ``file_name`` (``../raw/coco/train2017/000001.jpg``), so a clone of the repository elsewhere
  still resolves it; an absolute folder (shared storage, ``/mnt/datasets/coco/train2017``)
  gives absolute ``file_name`` entries.

pycocotools never opens images, so it reads either form. The JSON is written in chunks from
the split's arrays: memory stays flat however many images there are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipeline.data.errors import AnnotationError
from pipeline.data.records import Split

CHUNK = 20_000  # records serialised at a time


def check_unique_files(split: Split) -> None:
    """Two records of one split must not name the same image file.

    Raises:
        AnnotationError: naming both records.
    """
    first: dict[str, int] = {}
    for row, name in enumerate(split.images.file_names):
        other = first.setdefault(name, row)
        if other != row:
            raise AnnotationError(f"{split.images.where(row)}: file_name {name!r} is also used by "
                                  f"{split.images.where(other)}; every image needs its own file")


def check_held_out(test: Split, others: list[Split]) -> None:
    """The held-out ``test`` split must share no image file with ``others`` (train, val): a
    score on test would otherwise include images the model or the sweep has seen.

    Raises:
        AnnotationError: naming the first shared file.
    """
    def files(split: Split) -> set[str]:
        root = split.images.root
        return {os.path.abspath(root / name) if root is not None else f"{split.name}/{name}"
                for name in split.images.file_names}

    held = files(test)
    for other in others:
        shared = sorted(held & files(other))
        if shared:
            raise AnnotationError(f"{test.source}: the test split shares {len(shared)} image file(s) with the "
                                  f"{other.name} split ({other.source}), e.g. {shared[0]}; a held-out test "
                                  "split needs images of its own")


def image_file_names(split: Split, out_dir: Path) -> list[str]:
    """The ``file_name`` of each image in the prepared JSON (see the module docstring)."""
    images = split.images
    if images.root is None:  # generated: written under out_dir
        return [f"images/{split.name}/{name}" for name in images.file_names]
    root = images.root
    if root.is_absolute():
        prefix = root.as_posix()
    else:
        prefix = PurePosixPath(os.path.relpath(os.path.abspath(root), os.path.abspath(out_dir))).as_posix()
    prefix = prefix.rstrip("/")
    return [f"{prefix}/{name}" for name in images.file_names]


def write_split(split: Split, out_dir: Path) -> Path:
    """Write ``<out_dir>/<split>.json`` (and generated images); return the JSON path."""
    file_names = image_file_names(split, out_dir)
    if split.images.pixels is not None:
        folder = out_dir / "images" / split.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, pixels in zip(split.images.file_names, split.images.pixels):
            (folder / name).write_bytes(pixels)
    info = {"description": f"prepared {split.name} split of {split.source}",
            "file_name_root": "relative to this file's folder, or absolute",
            "images_copied": split.images.pixels is not None}
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(split.class_names)]
    path = out_dir / f"{split.name}.json"
    with path.open("w") as f:
        f.write('{"info":' + _dumps(info) + ',"images":[')
        _write_chunks(f, _image_chunks(split, file_names))
        f.write('],"annotations":[')
        _write_chunks(f, _annotation_chunks(split))
        f.write('],"categories":' + _dumps(categories) + "}\n")
    return path


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _write_chunks(f, chunks: Iterator[str]) -> None:
    first = True
    for chunk in chunks:
        if not chunk:
            continue
        f.write(chunk if first else "," + chunk)
        first = False


def _image_chunks(split: Split, file_names: list[str]) -> Iterator[str]:
    images = split.images
    for start in range(0, len(images), CHUNK):
        end = start + CHUNK
        yield ",".join([_IMAGE % (i, _string(name), w, h) for i, name, w, h in zip(
            images.ids[start:end].tolist(), file_names[start:end], images.widths[start:end].tolist(),
            images.heights[start:end].tolist())])


def _annotation_chunks(split: Split) -> Iterator[str]:
    """The annotations as JSON text. Coordinates and areas are written with three decimals,
    formatted from integers (``12.340``): five float reprs per box would cost more than the rest."""
    boxes, image_ids = split.boxes, split.images.ids
    for start in range(0, len(boxes), CHUNK):
        end = start + CHUNK
        xywh = boxes.xywh[start:end]  # (n, 4), finite and >= 0 (validated)
        area = boxes.area[start:end]
        area = np.where(np.isfinite(area), area, xywh[:, 2] * xywh[:, 3])  # NaN: the box's area
        milli = np.rint(np.concatenate([xywh, area[:, None]], axis=1) * 1000).astype(np.int64)  # (n, 5)
        if (milli < 0).any():  # pragma: no cover - validation keeps boxes inside the image
            raise AssertionError("negative box coordinates or area reached the writer")
        whole, frac = np.divmod(milli, 1000)
        numbers = np.stack([whole, frac], axis=2).reshape(-1, 10).tolist()  # (n, 10): x, x_frac, y, ...
        text = [_ANNOTATION % (ann_id, image_id, label, *xs, crowd) for ann_id, image_id, label, xs, crowd
                in zip(boxes.ids[start:end].tolist(), image_ids[boxes.image[start:end]].tolist(),
                       boxes.labels[start:end].tolist(), numbers, boxes.iscrowd[start:end].tolist())]
        for k in np.flatnonzero(boxes.difficult[start:end]).tolist():  # VOC only
            text[k] = text[k][:-1] + ',"difficult":1}'
        yield ",".join(text)


_IMAGE = '{"id":%d,"file_name":%s,"width":%d,"height":%d}'
_ANNOTATION = ('{"id":%d,"image_id":%d,"category_id":%d,"bbox":[%d.%03d,%d.%03d,%d.%03d,%d.%03d],'
               '"area":%d.%03d,"iscrowd":%d}')
_string = json.encoder.encode_basestring_ascii  # the quoted JSON string, as json.dumps writes it

"""Write prepared splits as a self-contained COCO dataset.

Layout (``out_dir`` is ``data/prepared``)::

    train.json  val.json          COCO: categories 1..C, bbox [x, y, w, h] px, area, iscrowd
    images/train/<name>           copies of the source images (or the generated PNGs)
    images/val/<name>

``file_name`` in the JSON is relative to the JSON's folder (``images/train/000001.png``),
so :class:`pipeline.data.dataset.CocoDetectionDataset` and pycocotools users resolve it
against ``out_dir``. Images are copied, not linked, so the output never shares inodes with
the source (DVC may make cached files read-only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.data.errors import AnnotationError
from pipeline.data.records import Split


def to_coco(split: Split) -> dict[str, Any]:
    """The COCO dict of ``split`` with ``file_name`` = ``images/<split>/<name>``."""
    images, annotations, names = [], [], {}
    for record in split.images:
        file_name = str(PurePosixPath("images", split.name, record.file_name))
        if file_name in names:
            raise AnnotationError(f"{record.where}: file_name {record.file_name!r} is also used by "
                                  f"{names[file_name]}; every image needs its own file")
        names[file_name] = record.where
        images.append({"id": record.id, "file_name": file_name, "width": record.width, "height": record.height})
        for box in record.boxes:
            x, y, w, h = (round(v, 3) for v in box.bbox)
            ann = {"id": box.id, "image_id": record.id, "category_id": box.label, "bbox": [x, y, w, h],
                   "area": round(box.area if box.area is not None else w * h, 3), "iscrowd": box.iscrowd}
            if box.difficult:
                ann["difficult"] = 1
            annotations.append(ann)
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(split.class_names)]
    return {
        "info": {"description": f"prepared {split.name} split of {split.source}",
                 "file_name_root": "relative to this file's folder"},
        "images": images, "annotations": annotations, "categories": categories,
    }


def write_split(split: Split, out_dir: Path) -> dict[str, Any]:
    """Write ``<out_dir>/<split>.json`` and the split's images; return the COCO dict."""
    coco = to_coco(split)
    for record, image in zip(split.images, coco["images"]):
        target = out_dir / image["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if record.pixels is not None:
            target.write_bytes(record.pixels)
        else:
            assert record.path is not None
            shutil.copyfile(record.path, target)
    (out_dir / f"{split.name}.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    return coco

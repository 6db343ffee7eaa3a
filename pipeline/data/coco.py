"""Read a COCO-format dataset: an annotation JSON plus an image folder.

This is the layout COCO itself and labelling tools (CVAT, Label Studio, Roboflow) export.
Categories are renumbered to ``1..C`` (sorted by source id, or in the order of
``data.classes`` when a subset is asked for); ``iscrowd`` is carried through; image and
annotation ids are kept.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.data.errors import AnnotationError, DataError
from pipeline.data.records import Box, ImageRecord, Split
from pipeline.data.validate import Policy, check_box, safe_relative_path


def read_coco(annotations: str | Path, images_dir: str | Path, split: str, policy: Policy,
              counts: Counter, classes: list[str] | None = None,
              class_names: list[str] | None = None) -> Split:
    """Read one split from a COCO annotation file.

    Args:
        annotations: the JSON file.
        images_dir: folder that ``file_name`` is relative to.
        policy: what to do with invalid boxes (``data.on_invalid_box``).
        counts: box outcomes and ``filtered_by_class`` are counted here.
        classes: the user's class subset (``data.classes``); each must exist in the file.
        class_names: the classes fixed by another split (val follows train): annotations of
            other categories are filtered out and counted, missing ones are fine.

    Raises:
        DataError: malformed JSON, missing or mistyped fields, duplicate ids, unknown
            categories, annotations of missing images, unsafe file names, invalid boxes.
    """
    path = Path(annotations)
    data = load_json(path)
    where = str(path)
    categories = _categories(data, where)
    if class_names is None:
        class_names = _select_classes(categories, classes, where)
    label_of = {cid: class_names.index(name) + 1 for cid, name in categories.items() if name in class_names}

    images: dict[int, ImageRecord] = {}
    for i, raw in enumerate(_list(data, "images", where)):
        rec_where = f"{where}: images[{i}]"
        image_id = _int(raw, "id", rec_where)
        rec_where = f"{where}: image id {image_id}"
        if image_id in images:
            raise AnnotationError(f"{rec_where}: duplicate image id; image ids must be unique")
        rel = safe_relative_path(raw.get("file_name"), rec_where)
        images[image_id] = ImageRecord(
            id=image_id, file_name=str(rel), width=_int(raw, "width", rec_where, positive=True),
            height=_int(raw, "height", rec_where, positive=True), path=Path(images_dir) / rel,
            where=rec_where,
        )

    seen: set[int] = set()
    for i, raw in enumerate(_list(data, "annotations", where, required=False)):
        ann_id = _int(raw, "id", f"{where}: annotations[{i}]")
        ann_where = f"{where}: annotation id {ann_id}"
        if ann_id in seen:
            raise AnnotationError(f"{ann_where}: duplicate annotation id; annotation ids must be unique")
        seen.add(ann_id)
        image_id = _int(raw, "image_id", ann_where)
        image = images.get(image_id)
        if image is None:
            raise AnnotationError(f"{ann_where}: points to image id {image_id}, which is not in 'images'; "
                                  "add the image or remove the annotation")
        ann_where = f"{where}: image id {image_id} ({image.file_name}) annotation id {ann_id}"
        category_id = _int(raw, "category_id", ann_where)
        if category_id not in categories:
            raise AnnotationError(f"{ann_where}: unknown category_id {category_id} "
                                  f"(categories: {sorted(categories)}); add it to 'categories' or fix the annotation")
        iscrowd = raw.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            raise AnnotationError(f"{ann_where}: iscrowd must be 0 or 1, got {iscrowd!r}")
        if category_id not in label_of:
            counts["filtered_by_class"] += 1
            continue
        bbox = check_box(raw.get("bbox"), image.width, image.height, policy, ann_where, counts)
        if bbox is None:
            continue
        area = raw.get("area")
        keep_area = isinstance(area, int | float) and area > 0 and bbox == [float(v) for v in raw["bbox"]]
        image.boxes.append(Box(id=ann_id, bbox=bbox, label=label_of[category_id], iscrowd=int(iscrowd),
                               area=float(area) if keep_area else None))
    return Split(name=split, class_names=class_names, images=list(images.values()), source=where)


def load_json(path: Path) -> Any:
    """Parse ``path``; a missing file or a syntax error names the file and the position."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found; check data.coco paths")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}; "
                              "fix or re-export the file") from err
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err}); is this really a COCO JSON file?") from err


def _categories(data: Any, where: str) -> dict[int, str]:
    categories: dict[int, str] = {}
    for i, raw in enumerate(_list(data, "categories", where)):
        cid = _int(raw, "id", f"{where}: categories[{i}]")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise AnnotationError(f"{where}: category id {cid}: 'name' must be a non-empty string, got {name!r}")
        if cid in categories:
            raise AnnotationError(f"{where}: duplicate category id {cid}")
        if name in categories.values():
            raise AnnotationError(f"{where}: category id {cid}: duplicate category name {name!r}")
        categories[cid] = name
    if not categories:
        raise AnnotationError(f"{where}: 'categories' is empty; a detection dataset needs at least one class")
    return categories


def _select_classes(categories: dict[int, str], classes: list[str] | None, where: str) -> list[str]:
    if classes is None:
        return [categories[cid] for cid in sorted(categories)]
    missing = [c for c in classes if c not in categories.values()]
    if missing:
        raise DataError(f"data.classes: {missing} not among the categories of {where} "
                        f"(available: {sorted(categories.values())})")
    return list(classes)


def _list(data: Any, key: str, where: str, required: bool = True) -> list[dict]:
    if not isinstance(data, dict):
        raise AnnotationError(f"{where}: expected a JSON object with images, annotations and categories, "
                              f"got {type(data).__name__}")
    if key not in data and not required:
        return []
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise AnnotationError(f"{where}: '{key}' must be a list of objects")
    return value


def _int(raw: dict, key: str, where: str, positive: bool = False) -> int:
    value = raw.get(key)
    if isinstance(value, float) and value.is_integer():  # some exporters write 640.0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (positive and value <= 0):
        kind = "a positive integer" if positive else "an integer"
        raise AnnotationError(f"{where}: '{key}' must be {kind}, got {value!r}")
    return value

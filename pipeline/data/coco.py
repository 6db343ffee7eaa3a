"""Read a COCO-format dataset: an annotation JSON plus an image folder.

This is the layout COCO itself and labelling tools (CVAT, Label Studio, Roboflow) export.
Categories are renumbered to ``1..C`` (sorted by source id, or in the order of
``data.classes`` when a subset is asked for); ``iscrowd`` is carried through; image and
annotation ids are kept.
"""

from __future__ import annotations

import json
import math
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import jsonstream
from pipeline.data.errors import AnnotationError, DataError
from pipeline.data.records import BoxColumns, Images, Split
from pipeline.data.validate import Policy, check_box, safe_relative_path


def read_coco(annotations: str | Path, images_dir: str | Path, split: str, policy: Policy,
              counts: Counter, classes: list[str] | None = None,
              class_names: list[str] | None = None) -> Split:
    """Read one split from a COCO annotation file.

    Args:
        annotations: the JSON file.
        images_dir: folder that ``file_name`` is relative to (kept as given: a relative folder
            gives relative paths in the prepared JSON, an absolute one absolute paths).
        policy: what to do with invalid boxes (``data.on_invalid_box``).
        counts: box outcomes and ``filtered_by_class`` are counted here.
        classes: the user's class subset (``data.classes``); each must exist in the file.
        class_names: the classes fixed by another split (val follows train): annotations of
            other categories are filtered out and counted, missing ones are fine.

    The file is streamed (one array element at a time) into compact arrays (see
    :mod:`pipeline.data.records`): memory does not grow with the size of the JSON.

    Raises:
        DataError: malformed JSON, missing or mistyped fields, duplicate ids, unknown
            categories, annotations of missing images, unsafe file names, invalid boxes.
    """
    path = Path(annotations)
    where = str(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found; check data.coco paths")
    try:
        if jsonstream.first_char(path) != "{":
            _list(load_json(path), "images", where)  # raises: not an object (or not JSON at all)
        reader = _Reader(path, where, policy, counts, classes, class_names)
        reader.read()
    except jsonstream.JsonError as err:
        raise AnnotationError(f"{path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}; "
                              "fix or re-export the file") from err
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err}); is this really a COCO JSON file?") from err
    images = Images(ids=np.frombuffer(reader.ids, dtype=np.int64).copy(),
                    widths=np.frombuffer(reader.widths, dtype=np.int64).copy(),
                    heights=np.frombuffer(reader.heights, dtype=np.int64).copy(), file_names=reader.file_names,
                    root=Path(images_dir), where_prefix=where)
    assert reader.class_names is not None
    return Split(name=split, class_names=reader.class_names, images=images, boxes=reader.boxes.build(),
                 source=where)


class _Reader:
    """Streams one COCO file into compact columns (:mod:`pipeline.data.jsonstream`).

    Checks run in the order of a whole-file read: categories (and ``data.classes``), then
    images, then annotations. Annotations need the categories and images, so when the file
    puts them later (COCO itself ends with ``categories``), the annotations are read in a
    second pass over the file.
    """

    def __init__(self, path: Path, where: str, policy: Policy, counts: Counter, classes: list[str] | None,
                 class_names: list[str] | None) -> None:
        self.path, self.where, self.policy, self.counts = path, where, policy, counts
        self.classes, self.class_names = classes, class_names
        self.categories: dict[int, str] | None = None
        self.label_of: dict[int, int] = {}
        self.row_of: dict[int, int] | None = None  # image id -> row, once the images are read
        self.ids, self.widths, self.heights = array("q"), array("q"), array("q")
        self.file_names: list[str] = []
        self.image_error: AnnotationError | None = None  # raised after the category checks
        self.boxes = BoxColumns()

    def read(self) -> None:
        annotations_read = False
        for key, value in jsonstream.top_level(self.path):
            if key == "categories":
                self._categories(value)
            elif key == "images":
                self._images(value)
            elif key == "annotations" and self.categories is not None and self.row_of is not None:
                self._check_images_done()
                self._annotations(value)
                annotations_read = True
        if self.categories is None:
            self._categories(None)
        if self.row_of is None:
            _list({}, "images", self.where)  # raises: 'images' must be a list of objects
        self._check_images_done()
        if not annotations_read:
            for key, value in jsonstream.top_level(self.path):
                if key == "annotations":
                    self._annotations(value)

    def _categories(self, value: jsonstream.Value | None) -> None:
        data = {} if value is None else {"categories": value.value()}
        self.categories = _categories(data, self.where)
        if self.class_names is None:
            self.class_names = _select_classes(self.categories, self.classes, self.where)
        self.label_of = {cid: self.class_names.index(name) + 1 for cid, name in self.categories.items()
                         if name in self.class_names}

    def _images(self, value: jsonstream.Value) -> None:
        where = self.where
        if not value.is_array():
            _list({"images": value.value()}, "images", where)  # raises
        row_of: dict[int, int] = {}
        try:
            for i, raw in enumerate(value.items()):
                if not isinstance(raw, dict):
                    _list({"images": [raw]}, "images", where)  # raises
                image_id = _int(raw, "id", f"{where}: images[{i}]")
                rec_where = f"{where}: image id {image_id}"
                if image_id in row_of:
                    raise AnnotationError(f"{rec_where}: duplicate image id; image ids must be unique")
                row_of[image_id] = i
                self.file_names.append(str(safe_relative_path(raw.get("file_name"), rec_where)))
                self.ids.append(image_id)
                self.widths.append(_int(raw, "width", rec_where, positive=True))
                self.heights.append(_int(raw, "height", rec_where, positive=True))
        except AnnotationError as err:
            self.image_error = err  # the rest of the array is skipped
        self.row_of = row_of

    def _check_images_done(self) -> None:
        if self.image_error is not None:
            raise self.image_error

    def _annotations(self, value: jsonstream.Value) -> None:
        where, file_names, widths, heights = self.where, self.file_names, self.widths, self.heights
        categories, label_of, row_of, boxes = self.categories, self.label_of, self.row_of, self.boxes
        assert categories is not None and row_of is not None
        if not value.is_array():
            _list({"annotations": value.value()}, "annotations", where)  # raises
        seen: set[int] = set()
        for i, raw in enumerate(value.items()):
            if not isinstance(raw, dict):
                _list({"annotations": [raw]}, "annotations", where)  # raises
            ann_id = raw.get("id")
            if type(ann_id) is not int:
                ann_id = _int(raw, "id", f"{where}: annotations[{i}]")
            if ann_id in seen:
                raise AnnotationError(f"{where}: annotation id {ann_id}: duplicate annotation id; "
                                      "annotation ids must be unique")
            seen.add(ann_id)
            image_id = raw.get("image_id")
            if type(image_id) is not int:
                image_id = _int(raw, "image_id", f"{where}: annotation id {ann_id}")
            row = row_of.get(image_id)
            if row is None:
                raise AnnotationError(f"{where}: annotation id {ann_id}: points to image id {image_id}, which is "
                                      "not in 'images'; add the image or remove the annotation")
            category_id = raw.get("category_id")
            if type(category_id) is not int or category_id not in categories:
                ann_where = f"{where}: image id {image_id} ({file_names[row]}) annotation id {ann_id}"
                category_id = _int(raw, "category_id", ann_where)
                if category_id not in categories:
                    raise AnnotationError(f"{ann_where}: unknown category_id {category_id} (categories: "
                                          f"{sorted(categories)}); add it to 'categories' or fix the annotation")
            iscrowd = raw.get("iscrowd", 0)
            if type(iscrowd) is bool or iscrowd not in (0, 1):
                raise AnnotationError(f"{where}: image id {image_id} ({file_names[row]}) annotation id {ann_id}: "
                                      f"iscrowd must be 0 or 1, got {iscrowd!r}")
            label = label_of.get(category_id)
            if label is None:
                self.counts["filtered_by_class"] += 1
                continue
            bbox = raw.get("bbox")
            w_img, h_img = widths[row], heights[row]
            if _inside(bbox, w_img, h_img):  # the common case, without building a message
                xywh, unchanged = bbox, True
            else:
                ann_where = f"{where}: image id {image_id} ({file_names[row]}) annotation id {ann_id}"
                xywh = check_box(bbox, w_img, h_img, self.policy, ann_where, self.counts)
                if xywh is None:
                    continue
                unchanged = xywh == [float(v) for v in bbox]
            area = raw.get("area")
            keep_area = unchanged and type(area) in (int, float) and area > 0
            boxes.add(ann_id, row, xywh, label, int(iscrowd), area=float(area) if keep_area else math.nan)


_NUMBER = (int, float)


def _inside(bbox: object, width: int, height: int) -> bool:
    """``bbox`` is four numbers with ``w, h > 0`` strictly inside the image (what
    :func:`check_box` returns unchanged). NaN fails every comparison, so it is not inside."""
    if type(bbox) is not list or len(bbox) != 4:
        return False
    x, y, w, h = bbox
    if type(x) not in _NUMBER or type(y) not in _NUMBER or type(w) not in _NUMBER or type(h) not in _NUMBER:
        return False
    return 0 <= x and 0 <= y and 0 < w and 0 < h and x + w <= width and y + h <= height


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

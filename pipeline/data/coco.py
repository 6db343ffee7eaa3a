"""Read a COCO-format dataset: an annotation JSON plus an image folder.

This is the layout COCO itself and labelling tools (CVAT, Label Studio, Roboflow) export.
Categories are renumbered to ``1..C`` (sorted by source id, or in the order of
``data.classes`` when a subset is asked for); ``iscrowd`` is carried through; image and
annotation ids are kept.
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import jsonstream
from pipeline.data.errors import AnnotationError, DataError
from pipeline.data.records import Boxes, Images, Split
from pipeline.data.validate import Policy, check_box, safe_file_name


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
    return Split(name=split, class_names=reader.class_names, images=images, boxes=reader.boxes_built,
                 source=where)


class _Reader:
    """Streams one COCO file into compact columns in one pass (:mod:`pipeline.data.jsonstream`).

    Categories, images and annotations may come in any order (COCO itself ends with
    ``categories``), so annotations are stored as read (:class:`_RawAnnotations`) and checked
    at the end, vectorised. Errors are reported in the order a whole-file read would find
    them: categories (and ``data.classes``), then images, then the first bad annotation.
    """

    def __init__(self, path: Path, where: str, policy: Policy, counts: Counter, classes: list[str] | None,
                 class_names: list[str] | None) -> None:
        self.path, self.where, self.policy, self.counts = path, where, policy, counts
        self.classes, self.class_names = classes, class_names
        self.categories: dict[int, str] | None = None
        self.images_read = False
        self.ids, self.widths, self.heights = array("q"), array("q"), array("q")
        self.file_names: list[str] = []
        self.image_error: AnnotationError | None = None  # raised after the category checks
        self.annotations = _RawAnnotations()
        self.boxes_built: Boxes | None = None

    def read(self) -> None:
        from tqdm import tqdm

        with tqdm(total=self.path.stat().st_size, desc=f"reading {self.path.name}", unit="B", unit_scale=True,
                  file=sys.stderr, disable=None, dynamic_ncols=True, mininterval=0.5) as bar:
            self._read_stream(bar.update)
        if self.categories is None:
            self._categories(None)
        if not self.images_read:
            _list({}, "images", self.where)  # raises: 'images' must be a list of objects
        if self.image_error is not None:
            raise self.image_error
        self._check_annotations()

    def _read_stream(self, progress) -> None:
        for key, value in jsonstream.top_level(self.path, progress):
            if key == "categories":
                self._categories(value.value())
            elif key == "images":
                self._images(value)
            elif key == "annotations":
                self.annotations.read(value, self.where)

    def _categories(self, raw: Any) -> None:
        self.categories = _categories({} if raw is None else {"categories": raw}, self.where)
        if self.class_names is None:
            self.class_names = _select_classes(self.categories, self.classes, self.where)

    def _images(self, value: jsonstream.Value) -> None:
        where = self.where
        self.images_read = True
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
                self.file_names.append(safe_file_name(raw.get("file_name"), rec_where))
                self.ids.append(image_id)
                self.widths.append(_int(raw, "width", rec_where, positive=True))
                self.heights.append(_int(raw, "height", rec_where, positive=True))
        except AnnotationError as err:
            self.image_error = err  # the rest of the array is skipped

    def _check_annotations(self) -> None:
        """Check every stored annotation; keep the valid ones in :attr:`boxes`.

        Shapes: ``n`` stored annotations, ``I`` images.
        """
        raw, where, counts = self.annotations, self.where, self.counts
        assert self.categories is not None and self.class_names is not None
        if raw.error is not None:
            raise raw.error
        n = len(raw)
        ints, floats = raw.columns()  # (n, 5) each
        ids, image_ids, category_ids = ints[:, 0], ints[:, 1], ints[:, 2]
        xywh = floats[:, :4]
        widths, heights = np.frombuffer(self.widths, dtype=np.int64), np.frombuffer(self.heights, dtype=np.int64)

        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        duplicate = first[inverse.reshape(-1)] != np.arange(n)  # (n,) an earlier annotation has this id
        image_table = np.frombuffer(self.ids, dtype=np.int64)
        order = np.argsort(image_table, kind="stable")
        at = np.clip(np.searchsorted(image_table[order], image_ids), 0, max(len(order) - 1, 0))
        row = order[at] if len(order) else np.zeros(n, dtype=np.int64)  # (n,) row of each annotation's image
        missing = (image_table[row] != image_ids) if len(order) else np.ones(n, dtype=bool)
        unique_cats, cat_inverse = np.unique(category_ids, return_inverse=True)
        label_of = {cid: self.class_names.index(name) + 1 for cid, name in self.categories.items()
                    if name in self.class_names}
        known = np.isin(unique_cats, list(self.categories))[cat_inverse.reshape(-1)]
        labels = np.asarray([label_of.get(c, 0) for c in unique_cats.tolist()], dtype=np.int64)
        labels = labels[cat_inverse.reshape(-1)] if n else np.zeros(0, dtype=np.int64)  # (n,) 0: filtered by class
        bad = np.flatnonzero(duplicate | missing | ~known)
        limit = int(bad[0]) if len(bad) else n  # annotations before this one pass the id/image/category checks
        if raw.stop is not None:
            limit = min(limit, raw.stop)

        W, H = widths[row[:limit]], heights[row[:limit]]
        x, y, w, h = xywh[:limit].T
        inside = (x >= 0) & (y >= 0) & (w > 0) & (h > 0) & (x + w <= W) & (y + h <= H)  # NaN: False
        kept = labels[:limit] > 0
        if not kept.all():
            counts["filtered_by_class"] += int((~kept).sum())
        keep, new_xywh = kept.copy(), xywh[:limit]
        unchanged = np.ones(limit, dtype=bool)
        to_check = np.flatnonzero(kept & ~inside).tolist()  # usually few: boxes at or over the border
        if to_check:
            new_xywh = new_xywh.copy()
        for i in to_check:
            r = int(row[i])
            ann_where = f"{where}: image id {int(image_ids[i])} ({self.file_names[r]}) annotation id {int(ids[i])}"
            bbox = raw.bbox_as_read(i)
            checked = check_box(bbox, int(widths[r]), int(heights[r]), self.policy, ann_where, counts)
            if checked is None:
                keep[i] = False
            else:
                new_xywh[i] = checked
                unchanged[i] = checked == [float(v) for v in bbox]
        if limit < n:  # the first annotation that fails the id, image or category checks
            self._raise_for(limit, bool(duplicate[limit]), bool(missing[limit]), int(row[limit]))
        if raw.stop is not None:  # a mistyped record: replay the checks on it as read
            self._raise_for_raw(raw.stop_raw, raw.stop, set(ids.tolist()))
        area = floats[:limit, 4]
        area = np.where(unchanged & (area > 0), area, np.nan)
        self.boxes_built = Boxes(ids=ids[:limit][keep], image=row[:limit][keep], xywh=new_xywh[keep],
                                 labels=labels[:limit][keep], iscrowd=ints[:limit, 3][keep],
                                 difficult=np.zeros(int(keep.sum()), dtype=bool), area=area[keep])

    def _raise_for(self, i: int, duplicate: bool, missing: bool, row: int) -> None:
        raw, where = self.annotations, self.where
        ann_id, image_id, category_id = raw.ints[5 * i:5 * i + 3]
        if duplicate:
            raise AnnotationError(f"{where}: annotation id {ann_id}: duplicate annotation id; "
                                  "annotation ids must be unique")
        if missing:
            raise AnnotationError(f"{where}: annotation id {ann_id}: points to image id {image_id}, which is "
                                  "not in 'images'; add the image or remove the annotation")
        assert self.categories is not None
        raise AnnotationError(f"{where}: image id {image_id} ({self.file_names[row]}) annotation id {ann_id}: "
                              f"unknown category_id {category_id} (categories: {sorted(self.categories)}); "
                              "add it to 'categories' or fix the annotation")

    def _raise_for_raw(self, raw: dict, i: int, earlier_ids: set[int]) -> None:
        """The error of annotation ``i`` (stored as read, ``raw``), checked as a whole-file read would."""
        where = self.where
        ann_id = _int(raw, "id", f"{where}: annotations[{i}]")
        if ann_id in earlier_ids:
            raise AnnotationError(f"{where}: annotation id {ann_id}: duplicate annotation id; "
                                  "annotation ids must be unique")
        image_id = _int(raw, "image_id", f"{where}: annotation id {ann_id}")
        rows = np.flatnonzero(np.frombuffer(self.ids, dtype=np.int64) == image_id)
        if not len(rows):
            raise AnnotationError(f"{where}: annotation id {ann_id}: points to image id {image_id}, which is "
                                  "not in 'images'; add the image or remove the annotation")
        ann_where = f"{where}: image id {image_id} ({self.file_names[int(rows[0])]}) annotation id {ann_id}"
        category_id = _int(raw, "category_id", ann_where)
        assert self.categories is not None
        if category_id not in self.categories:
            raise AnnotationError(f"{ann_where}: unknown category_id {category_id} (categories: "
                                  f"{sorted(self.categories)}); add it to 'categories' or fix the annotation")
        iscrowd = raw.get("iscrowd", 0)
        raise AnnotationError(f"{ann_where}: iscrowd must be 0 or 1, got {iscrowd!r}")


class _RawAnnotations:
    """Annotations as read from the stream, before the checks that need images and categories.

    Well-typed records go into two typed arrays (80 bytes each): ``ints`` rows are
    ``(id, image_id, category_id, iscrowd, int_mask)``, ``floats`` rows ``(x, y, w, h, area)``
    (``int_mask`` bit ``k``: coordinate ``k`` was an integer in the file, for messages; area NaN:
    absent). A record with a wrongly typed id, image id, category id or iscrowd is an error
    whatever else the file holds: it is kept as read (``stop_raw``) and nothing after it is
    stored. A ``bbox`` that is not four numbers is an error only if its class is kept: it is
    stored as NaN and kept as read in ``odd_bbox``.
    """

    def __init__(self) -> None:
        self.ints, self.floats = array("q"), array("d")
        self.odd_bbox: dict[int, Any] = {}  # position -> bbox as read, when not four numbers
        self.stop: int | None = None
        self.stop_raw: dict | None = None
        self.error: AnnotationError | None = None

    def __len__(self) -> int:
        return len(self.ints) // 5

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """``(n, 5)`` int64 and ``(n, 5)`` float64 views (see the class docstring)."""
        return (np.frombuffer(self.ints, dtype=np.int64).reshape(-1, 5),
                np.frombuffer(self.floats, dtype=np.float64).reshape(-1, 5))

    def read(self, value: jsonstream.Value, where: str) -> None:
        if not value.is_array():
            self.error = _list_error("annotations", where)
            return
        ints, floats, nan = self.ints.extend, self.floats.extend, math.nan
        n = len(self)
        for raw in value.items():
            if type(raw) is not dict:
                self.error = _list_error("annotations", where)
                break  # the rest of the array is skipped
            get = raw.get
            ann_id, image_id, category_id, iscrowd = get("id"), get("image_id"), get("category_id"), get("iscrowd", 0)
            if type(ann_id) is not int or type(image_id) is not int or type(category_id) is not int:
                ann_id, image_id, category_id = _as_int(ann_id), _as_int(image_id), _as_int(category_id)
            if type(iscrowd) is not int or (iscrowd != 0 and iscrowd != 1):
                iscrowd = 0 if iscrowd == 0.0 and type(iscrowd) is float else 1 if iscrowd == 1.0 and \
                    type(iscrowd) is float else None
            if ann_id is None or image_id is None or category_id is None or iscrowd is None:
                self.stop, self.stop_raw = n, raw
                break
            bbox = get("bbox")
            mask = -1
            if type(bbox) is list and len(bbox) == 4:
                b0, b1, b2, b3 = bbox
                t0, t1, t2, t3 = type(b0), type(b1), type(b2), type(b3)
                if t0 in _NUMBER and t1 in _NUMBER and t2 in _NUMBER and t3 in _NUMBER:
                    mask = (t0 is int) | (t1 is int) << 1 | (t2 is int) << 2 | (t3 is int) << 3
            if mask < 0:
                self.odd_bbox[n] = bbox
                b0 = b1 = b2 = b3 = nan
                mask = 0
            area = get("area")
            if type(area) is not float and type(area) is not int:
                area = nan
            floats((b0, b1, b2, b3, area))
            ints((ann_id, image_id, category_id, iscrowd, mask))
            n += 1

    def bbox_as_read(self, i: int) -> Any:
        """Annotation ``i``'s bbox as the file wrote it (ints stay ints), for :func:`check_box`."""
        if i in self.odd_bbox:
            return self.odd_bbox[i]
        mask = self.ints[5 * i + 4]
        return [int(v) if mask >> k & 1 else v for k, v in enumerate(self.floats[5 * i:5 * i + 4])]


_NAN4 = (math.nan,) * 4


def _as_int(value: Any) -> int | None:
    """An id as an int (integral floats like ``640.0`` too, as :func:`_int` accepts), else None."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _list_error(key: str, where: str) -> AnnotationError:
    return AnnotationError(f"{where}: '{key}' must be a list of objects")


_NUMBER = (int, float)


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

"""Read a Pascal VOC folder (``VOCdevkit/VOC20xx``): ``Annotations/*.xml``,
``ImageSets/Main/{train,val}.txt`` and ``JPEGImages/``.

VOC boxes are 1-based and inclusive: ``x = xmin - 1``, ``w = xmax - xmin + 1`` (as
detectron2 and torchvision convert them). ``difficult`` objects are kept with
``iscrowd = 1`` so evaluation ignores them, as the VOC protocol does. Classes are the
object names found in the split files (sorted), or ``data.classes`` in that order.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.errors import AnnotationError, DataError
from pipeline.data.records import BoxColumns, Images, Split
from pipeline.data.validate import Policy, check_box, safe_relative_path


@dataclass
class _VocObject:
    name: str
    bbox: list[float]  # 0-based [x, y, w, h], not yet validated
    difficult: bool
    where: str


@dataclass
class _VocImage:
    voc_id: str
    file_name: str
    path: Path
    width: int
    height: int
    objects: list[_VocObject] = field(default_factory=list)
    where: str = ""


def read_voc(root: str | Path, policy: Policy, counts: dict[str, Counter], seed: int, val_fraction: float,
             classes: list[str] | None = None) -> tuple[Split, Split]:
    """Read the train and val splits of a VOC folder.

    The split comes from ``ImageSets/Main/train.txt`` and ``val.txt``; without them, the
    ids of ``trainval.txt`` (or every ``Annotations/*.xml``) are split with ``seed`` and
    ``val_fraction``. ``counts[split]`` receives box outcomes, ``difficult`` and
    ``filtered_by_class``.
    """
    from pipeline.data.split import seeded_split

    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise DataError(f"{root}: not a VOC folder (no Annotations/); set data.voc.root to a VOCdevkit/VOC20xx folder")
    main = root / "ImageSets" / "Main"
    if (main / "train.txt").is_file() and (main / "val.txt").is_file():
        ids = {"train": _read_ids(main / "train.txt"), "val": _read_ids(main / "val.txt")}
    else:
        all_ids = (_read_ids(main / "trainval.txt") if (main / "trainval.txt").is_file()
                   else [(p.stem, str(p)) for p in sorted((root / "Annotations").glob("*.xml"))])
        train_ids, val_ids = seeded_split(all_ids, seed, val_fraction, str(root))
        ids = {"train": train_ids, "val": val_ids}

    from tqdm import tqdm

    with tqdm(total=sum(len(v) for v in ids.values()), desc=f"reading {root}/Annotations", unit="xml",
              file=sys.stderr, disable=None, dynamic_ncols=True, mininterval=0.5) as bar:
        parsed = {name: [_parse(root, voc_id, f"{list_file}", bar) for voc_id, list_file in split_ids]
                  for name, split_ids in ids.items()}
    if classes is None:
        classes = sorted({obj.name for images in parsed.values() for image in images for obj in image.objects})
    else:
        found = {obj.name for images in parsed.values() for image in images for obj in image.objects}
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"data.classes: {missing} not found in any object of {root}/Annotations "
                            f"(found: {sorted(found)})")

    splits = []
    image_id, box_id = 1, 1
    for name, images in parsed.items():
        boxes = BoxColumns()
        for row, image in enumerate(images):
            for obj in image.objects:
                if obj.name not in classes:
                    counts[name]["filtered_by_class"] += 1
                    continue
                bbox = check_box(obj.bbox, image.width, image.height, policy, obj.where, counts[name])
                if bbox is None:
                    continue
                if obj.difficult:
                    counts[name]["difficult"] += 1
                boxes.add(box_id, row, bbox, classes.index(obj.name) + 1, iscrowd=int(obj.difficult),
                          difficult=obj.difficult)
                box_id += 1
        ids = np.arange(image_id, image_id + len(images), dtype=np.int64)
        image_id += len(images)
        table = Images(ids=ids, widths=np.asarray([i.width for i in images], dtype=np.int64).reshape(-1),
                       heights=np.asarray([i.height for i in images], dtype=np.int64).reshape(-1),
                       file_names=[i.file_name for i in images], root=root / "JPEGImages",
                       wheres=[i.where for i in images])
        splits.append(Split(name=name, class_names=list(classes), images=table, boxes=boxes.build(),
                            source=str(root)))
    return splits[0], splits[1]


def _read_ids(path: Path) -> list[tuple[str, str]]:
    """``(id, "file line n")`` for each non-empty line (first column) of an ImageSets list."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.split():
            out.append((line.split()[0], f"{path} line {n}"))
    return out


def _parse(root: Path, voc_id: str, listed_in: str, bar=None) -> _VocImage:
    if bar is not None:
        bar.update()
    xml_path = root / "Annotations" / f"{safe_relative_path(voc_id, listed_in)}.xml"
    if not xml_path.is_file():
        raise AnnotationError(f"{listed_in}: image id {voc_id!r} has no annotation file {xml_path}")
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as err:
        raise AnnotationError(f"{xml_path}: not valid XML: {err}; fix or re-export the file") from err
    node = tree.getroot()
    where = str(xml_path)
    file_name = (node.findtext("filename") or "").strip() or f"{voc_id}.jpg"
    rel = safe_relative_path(file_name, f"{where}: <filename>")
    path = root / "JPEGImages" / rel
    if not path.is_file() and (root / "JPEGImages" / f"{voc_id}.jpg").is_file():
        rel, path = safe_relative_path(f"{voc_id}.jpg", where), root / "JPEGImages" / f"{voc_id}.jpg"
    width, height = _number(node, "size/width", where, 0), _number(node, "size/height", where, 0)
    if width <= 0 or height <= 0:  # some tools write no size or 0: read it from the image header
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as err:
            raise DataError(f"{where}: no <size> and image {path} cannot be read ({err})") from err
    image = _VocImage(voc_id=voc_id, file_name=str(rel), path=path, width=int(width), height=int(height),
                      where=f"{where} (image {voc_id})")
    for i, obj in enumerate(node.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        obj_where = f"{where}: object #{i} ({name or 'no name'})"
        if not name:
            raise AnnotationError(f"{obj_where}: <name> is missing")
        if obj.find("bndbox") is None:
            raise AnnotationError(f"{obj_where}: <bndbox> is missing")
        xmin, ymin, xmax, ymax = (_number(obj, f"bndbox/{k}", obj_where) for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = _number(obj, "difficult", obj_where, 0) == 1
        # 1-based inclusive corners -> 0-based [x, y, w, h]
        image.objects.append(_VocObject(name=name, bbox=[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1],
                                        difficult=difficult, where=obj_where))
    return image


def _number(node: ET.Element, path: str, where: str, default: float | None = None) -> float:
    text = node.findtext(path)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise AnnotationError(f"{where}: <{path}> is missing")
    try:
        return float(text)
    except ValueError as err:
        raise AnnotationError(f"{where}: <{path}> must be a number, got {text!r}") from err

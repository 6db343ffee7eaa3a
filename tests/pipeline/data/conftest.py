"""Helpers for the data-stage tests: tiny raw COCO and VOC sources written into tmp dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png(path: Path, width: int, height: int, value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


def _raw_coco(root: Path, num_images: int = 4, size: tuple[int, int] = (40, 30)) -> Path:
    """``root/annotations.json`` + ``root/images/img{i}.png`` (w x h = ``size``), 2 boxes per
    image of categories 7 ("cat") and 3 ("dog"), one crowd box; returns the JSON path."""
    w, h = size
    images, annotations = [], []
    for i in range(num_images):
        _png(root / "images" / f"img{i}.png", w, h)
        images.append({"id": 10 + i, "file_name": f"img{i}.png", "width": w, "height": h})
        annotations.append({"id": 100 + 2 * i, "image_id": 10 + i, "category_id": 7, "bbox": [1, 2, 10, 8],
                            "area": 80, "iscrowd": 0})
        annotations.append({"id": 101 + 2 * i, "image_id": 10 + i, "category_id": 3, "bbox": [5, 5, 20, 20],
                            "area": 300.5, "iscrowd": int(i == 0)})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}
    path = root / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def raw_coco(tmp_path: Path):
    """Factory ``raw_coco(num_images=4, edit=None) -> (json_path, images_dir)``; ``edit(coco)``
    may change the COCO dict in place before it is written back."""

    def make(num_images: int = 4, edit=None, name: str = "src") -> tuple[Path, Path]:
        path = _raw_coco(tmp_path / name, num_images)
        if edit is not None:
            coco = json.loads(path.read_text())
            edit(coco)
            path.write_text(json.dumps(coco))
        return path, path.parent / "images"

    return make


VOC_XML = """<annotation>
  <folder>VOC2012</folder><filename>{id}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""
VOC_OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult>
  <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"""


def write_voc(root: Path, images: dict[str, list[tuple]], splits: dict[str, list[str]] | None = None,
              size: tuple[int, int] = (50, 40)) -> Path:
    """A VOC folder: ``images`` maps id -> [(name, difficult, xmin, ymin, xmax, ymax)] (1-based)."""
    w, h = size
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for voc_id, objects in images.items():
        objs = "".join(VOC_OBJECT.format(name=n, difficult=d, xmin=x0, ymin=y0, xmax=x1, ymax=y1)
                       for n, d, x0, y0, x1, y1 in objects)
        (root / "Annotations" / f"{voc_id}.xml").write_text(VOC_XML.format(id=voc_id, w=w, h=h, objects=objs))
        root.joinpath("JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{voc_id}.jpg")
    if splits:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        for name, ids in splits.items():
            (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture
def voc_folder():
    """The :func:`write_voc` helper (test modules cannot import conftest reliably)."""
    return write_voc

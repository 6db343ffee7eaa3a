"""The in-memory dataset every source is read into before it is validated and written.

A source reader (synthetic, COCO, VOC) returns one :class:`Split` per split. The split is
*columnar*: a few numpy arrays for the ``I`` images and ``B`` boxes instead of one Python
object per image and per box, so a 100k-image, 1M-box COCO file costs tens of MB here, not
gigabytes. Boxes are ``[x, y, w, h]`` in pixels of the original image, labels are 1-based
indices into ``class_names`` (so the written category ids are 1..C).

Images are referenced where they are: ``file_names[i]`` is relative to ``image_root``
(``None`` for generated images, whose PNG bytes are in ``pixels``).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Images:
    """``I`` images: ids, sizes and file names (plus PNG bytes for generated images).

    ``wheres`` names each record in messages (``VOC2012/Annotations/x.xml (image x)``); when it
    is ``None`` a record is named ``"<where_prefix>: image id <id>"``, the COCO style.
    """

    ids: np.ndarray                     # (I,) int64
    widths: np.ndarray                  # (I,) int64
    heights: np.ndarray                 # (I,) int64
    file_names: list[str]               # (I,) POSIX paths relative to ``root``
    root: Path | None = None            # the image folder; None: generated images in ``pixels``
    pixels: list[bytes] | None = None   # (I,) PNG bytes of generated images
    wheres: list[str] | None = None
    where_prefix: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, i: int) -> str:
        """The record's name in messages, e.g. ``instances.json: image id 7``."""
        if self.wheres is not None:
            return self.wheres[i]
        return f"{self.where_prefix}: image id {int(self.ids[i])}"

    def path(self, i: int) -> Path:
        """The source file of image ``i`` (only for images that are not generated)."""
        assert self.root is not None
        return self.root / self.file_names[i]

    def take(self, rows: np.ndarray) -> Images:
        rows = np.asarray(rows, dtype=np.int64)
        pick = rows.tolist()
        return Images(ids=self.ids[rows], widths=self.widths[rows], heights=self.heights[rows],
                      file_names=[self.file_names[i] for i in pick], root=self.root,
                      pixels=None if self.pixels is None else [self.pixels[i] for i in pick],
                      wheres=None if self.wheres is None else [self.wheres[i] for i in pick],
                      where_prefix=self.where_prefix)


@dataclass
class Boxes:
    """``B`` annotations; ``image`` is the row of each box's image in :class:`Images`."""

    ids: np.ndarray        # (B,) int64
    image: np.ndarray      # (B,) int64 row index into the split's images
    xywh: np.ndarray       # (B, 4) float64 [x, y, w, h] pixels
    labels: np.ndarray     # (B,) int64 in 1..C
    iscrowd: np.ndarray    # (B,) int64 0/1
    difficult: np.ndarray  # (B,) bool (VOC)
    area: np.ndarray       # (B,) float64 the source's area (e.g. a COCO mask area); NaN: the box area

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Split:
    """The images and boxes of one split (``train`` or ``val``) with the shared class names."""

    name: str
    class_names: list[str]
    images: Images
    boxes: Boxes
    source: str = ""  # the annotation file or folder, for messages

    def take(self, rows: np.ndarray | list[int], name: str | None = None) -> Split:
        """A new split of the image ``rows`` (in that order) and their boxes (in box order)."""
        rows = np.asarray(rows, dtype=np.int64)
        new_row = np.full(len(self.images), -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        keep = new_row[self.boxes.image] >= 0
        b = self.boxes
        boxes = Boxes(ids=b.ids[keep], image=new_row[b.image[keep]], xywh=b.xywh[keep], labels=b.labels[keep],
                      iscrowd=b.iscrowd[keep], difficult=b.difficult[keep], area=b.area[keep])
        return Split(name=name or self.name, class_names=self.class_names, images=self.images.take(rows),
                     boxes=boxes, source=self.source)


@dataclass
class BoxColumns:
    """Appends boxes one at a time into compact typed arrays (8 bytes per number)."""

    ids: array = field(default_factory=lambda: array("q"))
    image: array = field(default_factory=lambda: array("q"))
    xywh: array = field(default_factory=lambda: array("d"))
    labels: array = field(default_factory=lambda: array("q"))
    iscrowd: array = field(default_factory=lambda: array("q"))
    difficult: array = field(default_factory=lambda: array("b"))
    area: array = field(default_factory=lambda: array("d"))

    def add(self, box_id: int, image: int, xywh: list[float] | tuple[float, ...], label: int, iscrowd: int = 0,
            difficult: bool = False, area: float = math.nan) -> None:
        self.ids.append(box_id)
        self.image.append(image)
        self.xywh.extend(xywh)
        self.labels.append(label)
        self.iscrowd.append(iscrowd)
        self.difficult.append(difficult)
        self.area.append(area)

    def build(self) -> Boxes:
        return Boxes(ids=np.frombuffer(self.ids, dtype=np.int64).copy(),
                     image=np.frombuffer(self.image, dtype=np.int64).copy(),
                     xywh=np.frombuffer(self.xywh, dtype=np.float64).reshape(-1, 4).copy(),
                     labels=np.frombuffer(self.labels, dtype=np.int64).copy(),
                     iscrowd=np.frombuffer(self.iscrowd, dtype=np.int64).copy(),
                     difficult=np.frombuffer(self.difficult, dtype=np.int8).astype(bool),
                     area=np.frombuffer(self.area, dtype=np.float64).copy())

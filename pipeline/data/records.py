"""The in-memory dataset every source is read into before it is validated and written.

A source reader (synthetic, COCO, VOC) returns one :class:`Split` per split. Boxes are
``[x, y, w, h]`` in pixels of the original image, labels are 1-based indices into
``class_names`` (so the written category ids are 1..C).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Box:
    """One annotation. ``bbox`` is ``[x, y, w, h]`` in pixels; ``label`` in ``1..C``."""

    id: int
    bbox: list[float]
    label: int
    iscrowd: int = 0
    difficult: bool = False
    area: float | None = None  # the source's area (e.g. a COCO mask area); None: the box area


@dataclass
class ImageRecord:
    """One image and its boxes.

    ``path`` is the source file (``None`` when ``pixels`` holds generated PNG bytes),
    ``file_name`` the name written under ``images/<split>/`` in the prepared dataset,
    ``where`` names the record in error messages (e.g. ``instances.json image id 7``).
    """

    id: int
    file_name: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    path: Path | None = None
    pixels: bytes | None = None
    where: str = ""


@dataclass
class Split:
    """The images of one split (``train`` or ``val``) with the shared class names."""

    name: str
    class_names: list[str]
    images: list[ImageRecord]
    source: str = ""  # the annotation file or folder, for messages

"""Checks shared by every source: box validity (with the ``on_invalid_box`` policy),
image files (exist, decode fully, size as annotated) and image paths that stay inside
their folder.

Box outcomes are counted in a :class:`collections.Counter` under these keys, so nothing
is changed or dropped silently: ``clipped``, ``dropped_outside`` (wholly outside, or
degenerate once clipped), ``dropped_degenerate`` (width or height <= 0),
``dropped_nonfinite`` (NaN/inf), ``dropped_partly_outside`` (``drop`` policy) and
``clamped_rounding`` (within ``ROUNDING_TOLERANCE`` px of the border: float noise, clamped
under every policy).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath, PureWindowsPath
from typing import Literal

from PIL import Image, UnidentifiedImageError

from pipeline.data.errors import AnnotationError, ImageError, InvalidBoxError, UnsafePathError
from pipeline.data.records import ImageRecord

Policy = Literal["error", "clip", "drop"]
ROUNDING_TOLERANCE = 0.01  # px; coordinates this close outside the border are float noise

_FIX = "fix the annotation or set data.on_invalid_box to clip or drop"


def check_box(bbox: object, width: int, height: int, policy: Policy, where: str,
              counts: Counter) -> list[float] | None:
    """Return ``[x, y, w, h]`` inside a ``width x height`` image, or ``None`` to drop it.

    Args:
        bbox: the annotated ``[x, y, w, h]`` in pixels.
        where: names the file, image and annotation for messages.
        counts: incremented with the outcome (see the module docstring).

    Raises:
        AnnotationError: ``bbox`` is not four numbers (always an error).
        InvalidBoxError: the box is invalid and ``policy`` is ``error``.
    """
    if (not isinstance(bbox, list | tuple) or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)):
        raise AnnotationError(f"{where}: bbox must be four numbers [x, y, width, height], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return _reject(policy, "dropped_nonfinite", f"{where}: bbox {list(bbox)} has NaN or infinite coordinates", counts)
    if w <= 0 or h <= 0:
        return _reject(policy, "dropped_degenerate",
                       f"{where}: bbox {list(bbox)} has width or height <= 0", counts)
    x0, y0, x1, y1 = x, y, x + w, y + h
    tol = ROUNDING_TOLERANCE
    if x0 >= -tol and y0 >= -tol and x1 <= width + tol and y1 <= height + tol:
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            counts["clamped_rounding"] += 1
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
            return [x0, y0, x1 - x0, y1 - y0]
        return [x, y, w, h]
    message = (f"{where}: bbox {list(bbox)} (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) "
               f"extends outside the {width}x{height} image")
    if policy == "error":
        raise InvalidBoxError(f"{message}; {_FIX}")
    if policy == "drop":
        counts["dropped_partly_outside" if _overlaps(x0, y0, x1, y1, width, height) else "dropped_outside"] += 1
        return None
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        counts["dropped_outside"] += 1
        return None
    counts["clipped"] += 1
    return [x0, y0, x1 - x0, y1 - y0]


def _overlaps(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> bool:
    return min(x1, width) > max(x0, 0) and min(y1, height) > max(y0, 0)


def _reject(policy: Policy, key: str, message: str, counts: Counter) -> None:
    if policy == "error":
        raise InvalidBoxError(f"{message}; {_FIX}")
    counts[key] += 1
    return None


def safe_relative_path(file_name: object, where: str) -> PurePosixPath:
    """``file_name`` as a relative path that cannot leave its image folder.

    Raises:
        UnsafePathError: absolute paths, drive letters, ``..`` components, empty names.
    """
    if not isinstance(file_name, str) or not file_name.strip():
        raise AnnotationError(f"{where}: file_name must be a non-empty string, got {file_name!r}")
    posix = PurePosixPath(file_name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(file_name).drive or ".." in posix.parts:
        raise UnsafePathError(f"{where}: file_name {file_name!r} escapes the image folder; "
                              "use a path relative to the image folder without '..'")
    return posix


def check_images(records: Iterable[ImageRecord], threads: int = 4) -> None:
    """Decode every source image fully and compare its size with the annotated one.

    Decoding runs in a few threads (PIL releases the GIL); the first failing record in
    order is reported.

    Raises:
        ImageError: missing, unreadable or truncated file, or a size mismatch.
    """
    records = [r for r in records if r.path is not None]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(check_image, records):
            pass


def check_image(record: ImageRecord) -> None:
    """Check one image file (see :func:`check_images`); fills in a missing (0) size."""
    path = record.path
    assert path is not None
    if not path.is_file():
        raise ImageError(f"{record.where}: image file {path} not found; fix file_name or the image folder")
    try:
        with Image.open(path) as image:
            image.load()
            size = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{record.where}: image file {path} is unreadable or truncated ({err}); "
                         "re-export or remove the image") from err
    if record.width <= 0 or record.height <= 0:
        record.width, record.height = size
    elif size != (record.width, record.height):
        raise ImageError(f"{record.where}: annotated size {record.width}x{record.height} differs from "
                         f"{path} ({size[0]}x{size[1]}); fix width/height in the annotations")

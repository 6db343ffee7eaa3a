"""Image files for inference: which files of a folder are images, and reading one fully decoded."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from pipeline.data.decode import READ_ERRORS, ExifOrientation, decode_image

__all__ = ["IMAGE_SUFFIXES", "READ_ERRORS", "collect_images", "read_image"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image paths ``inputs`` name, in order: each is a folder (its image files, sorted, not
    recursive), a glob (``*``, ``?``, ``[``; sorted matches, ``**`` recursive), a ``.txt`` list (one
    path a line, relative to the list's folder; blank and ``#`` lines ignored) or a file as given
    (whatever its suffix; a missing file is kept, to be reported as unreadable with the others processed)."""
    paths: list[Path] = []
    for raw in map(str, inputs):
        item = Path(raw)
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif not item.exists() and any(char in raw for char in "*?["):
            paths += sorted(Path(p) for p in glob.glob(raw, recursive=True) if Path(p).is_file())
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = (line.strip() for line in item.read_text().splitlines())
            paths += [item.parent / line for line in lines if line and not line.startswith("#")]
        else:
            paths.append(item)
    return paths


def read_image(path: Path, exif_orientation: ExifOrientation = "apply") -> Image.Image:
    """The fully decoded 8-bit RGB image (decoding now, so a truncated file fails here), turned by its
    EXIF orientation unless ``exif_orientation`` is ``ignore``: boxes come out in the frame the user
    sees (:func:`pipeline.data.decode.decode_image`). Raises one of :data:`READ_ERRORS`."""
    return decode_image(path, exif_orientation_setting=exif_orientation)

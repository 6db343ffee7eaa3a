"""Image files for inference: which files of a folder are images, and reading one fully decoded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# What PIL raises for missing, unreadable or corrupt files (PNG chunk errors are SyntaxErrors).
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix) and the image files directly inside given folders, sorted."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)  # a missing file is reported as failed, with the others processed
    return paths


def read_image(path: Path) -> Image.Image:
    """The fully decoded RGB image (decoding now, so a truncated file fails here)."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")

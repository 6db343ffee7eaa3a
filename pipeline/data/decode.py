"""Decoding an image file into the 8-bit RGB picture the model sees: one function for training,
evaluation, ``predict`` and serving, so every stage sees the same pixels.

* **Bit depth and modes.** 16-bit grey (``I;16``, ``I``) is scaled to 8 bits (``value >> 8``), not
  clipped (PIL's ``convert("RGB")`` saturates it: a white picture); 16-bit RGB(A) PNGs PIL already
  reduces to their high bytes. Alpha is dropped (the colour underneath is kept), as torchvision's
  ``decode_image(mode=RGB)`` and detectron2's ``read_image`` do; palette images with a transparent
  colour go through RGBA first, so the palette's colours are kept. CMYK/YCCK JPEGs (Adobe's
  inverted CMYK included), progressive JPEG, WebP, BMP, TIFF are PIL's decoders; a GIF gives its
  first frame.
* **EXIF orientation** (tag 0x0112): :func:`orientation_applies` is the one rule, used by ``prepare``
  to check the annotated size and by every reader here. An annotation whose width/height equal the
  rotated size is in the rotated frame, whatever the setting; otherwise ``data.exif_orientation``
  decides (``apply``: the frame viewers and annotation tools show; ``ignore``: the stored pixels).
  Without an annotation (``predict``, serving) the setting decides; its default ``apply`` returns
  boxes in the frame the user sees.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import IO, Literal

import numpy as np
from PIL import Image, ImageOps

__all__ = ["EXIF_ORIENTATION_TAG", "READ_ERRORS", "ExifOrientation", "check_bad_fraction", "decode_image",
           "decode_or_none",
           "describe_error", "exif_orientation", "orientation_applies", "oriented_size", "to_rgb"]

ExifOrientation = Literal["apply", "ignore"]
EXIF_ORIENTATION_TAG = 0x0112
# What PIL raises for missing, unreadable or corrupt files (PNG chunk errors are SyntaxErrors; a
# damaged JPEG scan "broken data stream" is an OSError).
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_TRANSPOSED = frozenset({5, 6, 7, 8})  # orientations that swap width and height


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image (1..8; 1 when it has none or an invalid one).

    Reads only what PIL read with the header (JPEG APP1, PNG ``eXIf`` before the pixel data,
    WebP/TIFF metadata): no decoding.
    """
    raw = image.info.get("exif")
    if raw is not None:
        exif = Image.Exif()
        try:
            exif.load(raw)
        except READ_ERRORS:
            return 1
        value = exif.get(EXIF_ORIENTATION_TAG, 1)
    elif image.format == "TIFF":
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    else:
        value = 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``(width, height)`` of a stored ``size`` once ``orientation`` is applied."""
    return (size[1], size[0]) if orientation in _TRANSPOSED else (size[0], size[1])


def orientation_applies(orientation: int, stored_size: tuple[int, int], annotated_size: tuple[int, int] | None,
                        setting: ExifOrientation) -> bool:
    """Whether to rotate/flip the stored pixels by ``orientation`` (the rule of the module docstring).

    Args:
        stored_size: ``(width, height)`` of the pixels in the file.
        annotated_size: ``(width, height)`` the annotation gives, or None (no annotation).
    """
    if orientation == 1:
        return False
    rotated = oriented_size(stored_size, orientation)
    if annotated_size is not None and tuple(annotated_size) == rotated != tuple(stored_size):
        return True  # the annotation is in the rotated frame: nothing else fits it
    return setting == "apply"


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image of any PIL mode (see the module docstring); ``image`` must be loaded."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(image)  # (H, W) uint16 / int32 holding 0..65535
        grey = (np.clip(pixels, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL asks for this: a palette's transparent colour keeps its RGB
    if image.mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    return image.convert("RGB")  # RGBA drops alpha; L, P, CMYK, YCbCr, 1 convert


def decode_image(source: str | os.PathLike | bytes | IO[bytes], *, exif_orientation_setting: ExifOrientation = "apply",
                 annotated_size: tuple[int, int] | None = None) -> Image.Image:
    """The fully decoded 8-bit RGB image of a file (path, bytes or a binary file object).

    The whole file is decoded here (a truncated or damaged file raises now, not later) and the
    EXIF orientation applied where :func:`orientation_applies` says so for ``annotated_size``
    (``(width, height)`` of the annotation, None without one).

    Raises:
        OSError, ValueError, SyntaxError, Image.DecompressionBombError: see :data:`READ_ERRORS`.
    """
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    with Image.open(source) as image:
        orientation = exif_orientation(image)
        stored = image.size
        image.load()  # a GIF / multi-frame TIFF: its first frame
        decoded = image
        if orientation_applies(orientation, stored, annotated_size, exif_orientation_setting):
            decoded = ImageOps.exif_transpose(image)  # a new image
        rgb = to_rgb(decoded)
        return rgb.copy() if rgb is image else rgb  # closing the file invalidates ``image`` itself


def decode_or_none(source: str | os.PathLike | bytes | IO[bytes], **kwargs) -> tuple[Image.Image | None, str | None]:
    """:func:`decode_image`, or ``(None, what went wrong)`` for a file that cannot be decoded
    (for the stages that skip and list such files)."""
    try:
        return decode_image(source, **kwargs), None
    except READ_ERRORS as err:
        return None, describe_error(err)


def describe_error(err: BaseException) -> str:
    """``"OSError: broken data stream when reading image file"``: an error in a line of a report."""
    if isinstance(err, FileNotFoundError):
        return f"FileNotFoundError: {err.filename or err}"
    return f"{err.__class__.__name__}: {err}"


def check_bad_fraction(bad: Mapping[str, str], total: int, max_fraction: float, what: str) -> None:
    """Raise :class:`~pipeline.data.errors.TooManyBadImagesError` listing ``bad`` (file -> error) when
    they are more than ``max_fraction`` (``data.max_bad_fraction``) of the ``total`` images of ``what``
    (e.g. ``"train images"``)."""
    from pipeline.data.errors import TooManyBadImagesError

    if len(bad) > max_fraction * total:
        listing = "\n".join(f"  {file}: {error}" for file, error in sorted(bad.items()))
        raise TooManyBadImagesError(
            f"{len(bad)} of the {total} {what} cannot be decoded, more than data.max_bad_fraction="
            f"{max_fraction:g} allows; replace or remove them (or raise data.max_bad_fraction):\n{listing}")

"""Errors raised on bad input data.

Every message names the file and the record (image id, annotation id, XML object) and
says what to fix. They subclass :class:`ValueError`, so ``pipeline prepare`` prints them as
``error: ...`` and exits with code 2 instead of a traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be prepared; the message names the file and the record."""


class AnnotationError(DataError):
    """Malformed, inconsistent or unknown records in an annotation file (JSON or XML)."""


class ImageError(DataError):
    """An image file that is missing, unreadable, truncated or of another size than annotated."""


class InvalidBoxError(DataError):
    """A box that is degenerate, non-finite or outside its image (with ``data.on_invalid_box: error``)."""


class UnsafePathError(DataError):
    """An image ``file_name`` that escapes its image folder (``..``, absolute paths)."""


class EmptySplitError(DataError):
    """A train or val split without images."""


class BadImageError(ImageError):
    """An image that cannot be decoded while training or evaluating (``data.bad_images: fail``)."""


class TooManyBadImagesError(ImageError):
    """More images of a split could not be decoded than ``data.max_bad_fraction`` allows; the
    message lists them."""

"""Data stage: read a synthetic, COCO or VOC source, validate it, write a prepared COCO
dataset, and load it for training.

Modules: ``synthetic``, ``coco`` (streamed with ``jsonstream``), ``voc`` (sources), ``records``
(the columnar in-memory splits), ``validate`` (boxes, images, paths), ``split``, ``export`` (the
prepared layout), ``stats`` and ``anchor_fit`` (reports), ``fingerprint`` (DVC's view of the
source annotation files), ``dataset``, ``transforms`` and ``batching`` (training-time loading).
Import them directly; this package imports nothing heavy.
"""

from pipeline.data.errors import (
    AnnotationError,
    BadImageError,
    DataError,
    EmptySplitError,
    ImageError,
    InvalidBoxError,
    TooManyBadImagesError,
    UnsafePathError,
)

__all__ = ["AnnotationError", "BadImageError", "DataError", "EmptySplitError", "ImageError", "InvalidBoxError",
           "TooManyBadImagesError", "UnsafePathError"]

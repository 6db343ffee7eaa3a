"""Data stage: read a synthetic, COCO or VOC source, validate it, write a prepared COCO
dataset, and load it for training.

Modules: ``synthetic``, ``coco``, ``voc`` (sources), ``validate`` (boxes, images, paths),
``split``, ``export`` (the prepared layout), ``stats`` and ``anchor_fit`` (reports),
``dataset`` and ``transforms`` (training-time loading). Import them directly; this package
imports nothing heavy.
"""

from pipeline.data.errors import (
    AnnotationError,
    DataError,
    EmptySplitError,
    ImageError,
    InvalidBoxError,
    UnsafePathError,
)

__all__ = ["AnnotationError", "DataError", "EmptySplitError", "ImageError", "InvalidBoxError", "UnsafePathError"]

"""Detections for images, as the served model, ``predict`` and ``evaluate`` compute them.

- :mod:`pipeline.inference.loading`: a detector from a checkpoint file or an MLflow model URI, the
  device (``auto``), class names,
- :mod:`pipeline.inference.images`: reading image files (what PIL raises for a bad one),
- :mod:`pipeline.inference.detection`: a batch of PIL images in, detections in their original pixels out.

This package imports no metrics code (faster-coco-eval, pycocotools): the served model
(:mod:`pipeline.serving.model`) imports it, and its requirements are what it imports.
"""

"""The anchor shapes of one grid location, as plain numbers: the rule of
:func:`detector.anchors.cell_anchors`, importable without torch (the data stage's anchor fit uses it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["cell_anchor_rows"]


def cell_anchor_rows(stride: int, scales: Sequence[float], aspect_ratios: Sequence[float]) -> list[list[float]]:
    """Zero-centred anchors ``A x [x1, y1, x2, y2]`` for one location, ``A = len(scales) * len(aspect_ratios)``.

    Ordered ratio-major then scale (as torchvision). ``aspect_ratio = height / width``:
    area ``(stride * scale) ** 2``, ``width = sqrt(area / ratio)``, ``height = area / width``.
    """
    rows = []
    for ratio in aspect_ratios:
        for scale in scales:
            area = (stride * scale) ** 2
            w = math.sqrt(area / ratio)
            h = area / w
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return rows

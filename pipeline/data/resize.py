"""The training resize's output size, without torch: the data stage (anchor fit, box statistics) uses
it without importing torch; :mod:`pipeline.data.transforms` resizes images by it."""

from __future__ import annotations

__all__ = ["resized_size"]


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """``(h, w)`` after scaling the shorter side to ``min_size`` unless the longer side would
    exceed ``max_size`` (then the longer side becomes ``max_size``); aspect ratio kept.

    v2's ``Resize(size, max_size)`` refuses ``max_size == size`` (the default square 256 px
    setting), hence this rule of the project's own."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))

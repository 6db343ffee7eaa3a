"""Anchors fitted to the data: ``python -m pipeline anchors`` (``pipeline/anchors.py``).

- :mod:`~pipeline.anchor_search.geometry`: the best anchor IoU of every box, exactly and fast
  (only the nearest cell centre of each level can hold the best anchor of a shape);
- :mod:`~pipeline.anchor_search.search`: k-means in log space, then evolution and coordinate
  search of the scales per FPN level and the aspect ratios, for the best possible recall;
- :mod:`~pipeline.anchor_search.report`: the fitted section, the before/after table, the plot.
"""

from pipeline.anchor_search.geometry import BoxGrid, anchor_shapes
from pipeline.anchor_search.search import AnchorSet, FitResult, Score, fit_anchors, quick_fit, score

__all__ = ["AnchorSet", "BoxGrid", "FitResult", "Score", "anchor_shapes", "fit_anchors", "quick_fit", "score"]

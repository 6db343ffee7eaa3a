"""RPN IoU thresholds proposed for a set of anchors, from each box's best-anchor IoU.

The RPN's matcher labels an anchor foreground when its IoU with a box reaches the foreground
threshold, background below the background threshold, and ignores the band in between (each
box's best anchor is foreground anyway: ``allow_low_quality_matches``). Anchors fitted to the
boxes raise every box's best IoU, so thresholds tuned for the configured anchors no longer suit
them: this project's sweeps ranked fitted anchors first only with the thresholds moved from
[0.3, 0.7] to [0.4, 0.5] (BENCHMARKS.md, "Optuna (TPE) vs random search").

Rule (documented in README, "Fitting anchors"):

- foreground ``fg``: the highest value on a 0.05 grid in ``[0.4, 0.7]`` at which at least
  ``coverage`` (default 95%) of the boxes have their best anchor at or above it, so nearly
  every box trains the RPN with anchors that pass the threshold on their own rather than
  through the low-quality fallback (0.7: Faster R-CNN's value, the cap; 0.4: the floor, below
  which a "foreground" anchor barely overlaps its box);
- background ``bg = fg - margin`` (default 0.1, the band of the sweeps' winner [0.4, 0.5]),
  at least 0.1: a narrow ignore band keeps more anchors as training signal.

ATSS (Zhang et al., CVPR 2020) sets such a threshold per box from its candidates' IoU
statistics; this is the global counterpart for a matcher with one threshold pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FG_RANGE = (0.4, 0.7)
STEP = 0.05
MIN_BACKGROUND = 0.1


@dataclass(frozen=True)
class ThresholdProposal:
    """``[background, foreground]`` and the share of boxes whose best anchor reaches ``foreground``."""

    background: float
    foreground: float
    coverage: float           # share of boxes with best-anchor IoU >= foreground
    target_coverage: float    # the share the rule asked for
    reached: bool             # False: even the floor FG_RANGE[0] leaves more boxes below it

    def as_params(self) -> list[float]:
        """``model.rpn.iou_thresholds``: ``[background, foreground]``."""
        return [self.background, self.foreground]


def propose_iou_thresholds(best_iou: np.ndarray, coverage: float = 0.95, margin: float = 0.1) -> ThresholdProposal:
    """The thresholds of the module's rule for boxes whose best-anchor IoUs are ``best_iou`` ``(N,)``.

    Raises:
        ValueError: no boxes, ``coverage`` outside ``(0, 1]`` or ``margin`` outside ``(0, 0.6]``.
    """
    best_iou = np.asarray(best_iou, dtype=np.float64).reshape(-1)
    if best_iou.size == 0:
        raise ValueError("propose_iou_thresholds: no boxes")
    if not 0.0 < coverage <= 1.0 or not 0.0 < margin <= 0.6:
        raise ValueError(f"propose_iou_thresholds: coverage {coverage} must be in (0, 1] and margin {margin} in (0, 0.6]")
    lo, hi = FG_RANGE
    grid = np.round(np.arange(hi, lo - STEP / 2, -STEP), 2)  # 0.7, 0.65, ..., 0.4
    shares = [(best_iou >= t - 1e-9).mean() for t in grid]
    passing = [(t, s) for t, s in zip(grid.tolist(), shares) if s >= coverage]
    fg, share = passing[0] if passing else (lo, shares[-1])
    bg = round(max(MIN_BACKGROUND, fg - margin), 2)
    return ThresholdProposal(background=bg, foreground=round(fg, 2), coverage=round(float(share), 4),
                             target_coverage=coverage, reached=bool(passing))

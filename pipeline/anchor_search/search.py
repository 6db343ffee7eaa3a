"""Fit anchor scales (per FPN level) and one aspect-ratio set to the ground-truth boxes.

Objective: the best possible recall (BPR), the share of boxes with some anchor at IoU >=
the RPN foreground threshold, on the real anchor grid (:class:`~pipeline.anchor_search.geometry.BoxGrid`);
ties are broken by the mean best IoU. Constraint: at most ``budget`` anchors per location
(``n_scales * n_ratios``; the RPN head is shared, so every level has ``n_scales`` scales).

Search, as YOLOv5's autoanchor and nnDetection do it, once per *layout* ``(n_scales, n_ratios)``
with ``n_ratios = budget // n_scales`` (smaller layouts are subsets of these and never fit better):

1. k-means in log space: ``L * n_scales`` clusters of ``log sqrt(w h)`` sorted and dealt to the
   levels smallest first (FPN's order: anchor sizes grow with the level), ``n_ratios`` clusters
   of ``log(h / w)``;
2. a (1+1) evolution: mutate a few genes (log sizes, log ratios) with Gaussian noise whose
   width anneals, keep the child when it scores higher;
3. a coordinate search with shrinking steps.

Every layout is screened with a short evolution; the two best continue. The search runs on a
random subsample of the boxes; the candidates (and the starting anchors) are then scored on
all boxes, and the best wins, so the result is never worse than the starting anchors (when they fit
the budget).
Scales and ratios are rounded to 3 significant digits before that final scoring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.anchor_search.geometry import BoxGrid, anchor_shapes, log_ratio, log_side

__all__ = ["AnchorSet", "FitResult", "Score", "fit_anchors", "layouts", "score"]


@dataclass(frozen=True)
class AnchorSet:
    """Anchors as ``model.anchors`` holds them: ``scales`` (one list, or one list per level) and
    ``aspect_ratios`` (``height / width``)."""

    scales: tuple
    aspect_ratios: tuple[float, ...]

    @classmethod
    def of(cls, scales: Sequence[float] | Sequence[Sequence[float]], aspect_ratios: Sequence[float]) -> AnchorSet:
        nested = len(scales) > 0 and isinstance(scales[0], Sequence)
        sc = tuple(tuple(float(s) for s in level) for level in scales) if nested else tuple(float(s) for s in scales)
        return cls(sc, tuple(float(r) for r in aspect_ratios))

    @property
    def per_level(self) -> bool:
        return len(self.scales) > 0 and isinstance(self.scales[0], tuple)

    @property
    def num_scales(self) -> int:
        return len(self.scales[0]) if self.per_level else len(self.scales)

    @property
    def per_location(self) -> int:
        """Anchors per location: ``len(scales of a level) * len(aspect_ratios)``."""
        return self.num_scales * len(self.aspect_ratios)

    def as_params(self) -> dict[str, Any]:
        """The ``model.anchors`` section (plain lists)."""
        scales = [list(level) for level in self.scales] if self.per_level else list(self.scales)
        return {"scales": scales, "aspect_ratios": list(self.aspect_ratios)}

    def shapes(self, strides: Sequence[int]) -> list[np.ndarray]:
        return anchor_shapes(strides, self.as_params()["scales"], self.aspect_ratios)


@dataclass(frozen=True)
class Score:
    """How well anchors fit ``num_boxes`` boxes: ``hits`` have an anchor at IoU >= the threshold."""

    hits: int
    num_boxes: int
    sum_iou: float

    @property
    def bpr(self) -> float:
        return self.hits / self.num_boxes if self.num_boxes else 0.0

    @property
    def mean_iou(self) -> float:
        return self.sum_iou / self.num_boxes if self.num_boxes else 0.0

    def value(self) -> float:
        """One number ordered like ``(hits, sum_iou)``: the IoU part stays below one hit."""
        return self.hits + self.sum_iou / (self.num_boxes + 1)


def score(grid: BoxGrid, anchors: AnchorSet, fg_iou: float) -> Score:
    best = grid.best_iou(anchors.shapes(grid.strides))
    return Score(int((best >= fg_iou).sum()), len(best), float(best.sum()))


@dataclass
class FitResult:
    """The fitted anchors and how they compare with the starting ones (scored on all boxes)."""

    start: AnchorSet
    start_score: Score
    fitted: AnchorSet
    fitted_score: Score
    budget: int
    fg_iou: float
    candidates: list[dict[str, Any]] = field(default_factory=list)  # one per layout, scored on all boxes
    search_boxes: int = 0
    evaluations: int = 0
    seconds: float = 0.0

    @property
    def improved(self) -> bool:
        return self.fitted != self.start


def layouts(budget: int) -> list[tuple[int, int]]:
    """``(n_scales, n_ratios)`` with ``n_ratios = budget // n_scales``, the largest ``n_scales`` per ``n_ratios``."""
    if budget < 1:
        raise ValueError(f"anchor budget must be >= 1, got {budget}")
    best: dict[int, int] = {}
    for n_scales in range(1, budget + 1):
        best[budget // n_scales] = n_scales  # later (larger) n_scales win
    return sorted(((s, r) for r, s in best.items()), key=lambda t: t[0])


def kmeans_1d(x: np.ndarray, k: int, iterations: int = 50) -> np.ndarray:
    """Sorted ``(k,)`` centres of 1-D k-means (Lloyd), started at the quantiles ``(i + 0.5) / k``."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        edges = (centres[1:] + centres[:-1]) / 2
        assign = np.searchsorted(edges, x)  # (N,) cluster of each value
        sums = np.bincount(assign, weights=x, minlength=k)
        counts = np.bincount(assign, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        new.sort()
        if np.allclose(new, centres):
            break
        centres = new
    return centres


class _Layout:
    """Genome of one layout: ``size`` genes (log sides per level, or log shared scales) then log ratios.

    Per level, the ``L * n_scales`` sides are sorted and level ``l`` gets the ``l``-th slice
    (sizes grow with the level); shared, the ``n_scales`` log scales apply to every level.
    """

    def __init__(self, n_scales: int, n_ratios: int, strides: Sequence[int], per_level: bool,
                 lo_side: float, hi_side: float, lo_ratio: float, hi_ratio: float) -> None:
        self.n_scales, self.n_ratios, self.strides, self.per_level = n_scales, n_ratios, list(strides), per_level
        self.n_size = n_scales * len(strides) if per_level else n_scales
        log_strides = np.log(self.strides)
        if per_level:
            size_lo, size_hi = lo_side, hi_side
        else:  # a scale is a side over the stride
            size_lo, size_hi = lo_side - log_strides.max(), hi_side - log_strides.min()
        self.lower = np.r_[np.full(self.n_size, size_lo), np.full(n_ratios, lo_ratio)]
        self.upper = np.r_[np.full(self.n_size, size_hi), np.full(n_ratios, hi_ratio)]

    @property
    def name(self) -> str:
        return f"{self.n_scales} scale(s) x {self.n_ratios} ratio(s)"

    def canonical(self, genome: np.ndarray) -> np.ndarray:
        g = np.clip(genome, self.lower, self.upper)
        return np.r_[np.sort(g[:self.n_size]), np.sort(g[self.n_size:])]

    def decode(self, genome: np.ndarray, digits: int | None = None) -> AnchorSet:
        size, ratios = np.exp(genome[:self.n_size]), np.exp(genome[self.n_size:])
        r = (lambda v: float(f"{v:.{digits}g}")) if digits else float
        if self.per_level:
            scales: Any = [[r(size[level * self.n_scales + i] / stride) for i in range(self.n_scales)]
                           for level, stride in enumerate(self.strides)]
        else:
            scales = [r(v) for v in size]
        return AnchorSet.of(scales, [r(v) for v in ratios])

    def encode(self, anchors: AnchorSet) -> np.ndarray | None:
        """The genome of ``anchors`` in this layout (extra ratios repeat the last one), or None if
        it does not fit (more scales or ratios, per-level scales that overlap across levels...)."""
        if anchors.num_scales != self.n_scales or len(anchors.aspect_ratios) > self.n_ratios:
            return None
        ratios = list(anchors.aspect_ratios) + [anchors.aspect_ratios[-1]] * (self.n_ratios - len(anchors.aspect_ratios))
        if self.per_level:
            levels = ([list(level) for level in anchors.scales] if anchors.per_level
                      else [list(anchors.scales)] * len(self.strides))
            sides = [s * stride for level, stride in zip(levels, self.strides) for s in sorted(level)]
            if sides != sorted(sides):
                return None
            size = np.log(sides)
        elif anchors.per_level:
            return None
        else:
            size = np.log(sorted(anchors.scales))
        genome = np.r_[size, np.log(sorted(ratios))]
        return genome if np.array_equal(self.canonical(genome), genome) else None

    def kmeans_init(self, grid: BoxGrid) -> np.ndarray:
        sides = log_side(grid.wh)
        ratios = kmeans_1d(log_ratio(grid.wh), self.n_ratios)
        if self.per_level:
            size = kmeans_1d(sides, self.n_size)
        else:  # per level clusters, then one scale list: the log-mean over levels of each rank
            per_level = kmeans_1d(sides, self.n_scales * len(self.strides)).reshape(len(self.strides), self.n_scales)
            size = (per_level - np.log(self.strides)[:, None]).mean(axis=0)
        return self.canonical(np.r_[size, ratios])


class _Objective:
    """Counts evaluations, drives the progress bar."""

    def __init__(self, grid: BoxGrid, fg_iou: float, layout: _Layout, tick: Callable[[], None]) -> None:
        self.grid, self.fg_iou, self.layout, self.tick = grid, fg_iou, layout, tick
        self.evaluations = 0

    def __call__(self, genome: np.ndarray) -> float:
        self.evaluations += 1
        self.tick()
        return score(self.grid, self.layout.decode(genome), self.fg_iou).value()


def _evolve(genome: np.ndarray, value: float, objective: _Objective, rng: np.random.Generator, steps: int,
            sigma: tuple[float, float] = (0.2, 0.02)) -> tuple[np.ndarray, float]:
    """(1+1) evolution: each step mutates one gene (half the time) or each gene with probability 1/2."""
    layout, d = objective.layout, len(genome)
    for t in range(steps):
        width = sigma[0] * (sigma[1] / sigma[0]) ** (t / max(1, steps - 1))
        mask = rng.random(d) < 0.5 if rng.random() < 0.5 else np.zeros(d, bool)
        if not mask.any():
            mask[rng.integers(d)] = True
        child = layout.canonical(genome + mask * rng.normal(0.0, width, d))
        child_value = objective(child)
        if child_value > value:
            genome, value = child, child_value
    return genome, value


def _coordinate(genome: np.ndarray, value: float, objective: _Objective, max_evaluations: int,
                steps: Sequence[float] = (0.08, 0.04, 0.02, 0.01)) -> tuple[np.ndarray, float]:
    """Try ``+-step`` on each gene in turn, keep improvements; shrink the step when none helps."""
    used = 0
    for step in steps:
        improved = True
        while improved:
            improved = False
            for i in range(len(genome)):
                for sign in (1.0, -1.0):
                    if used >= max_evaluations:
                        return genome, value
                    child = genome.copy()
                    child[i] += sign * step
                    child = objective.layout.canonical(child)
                    used += 1
                    child_value = objective(child)
                    if child_value > value:
                        genome, value, improved = child, child_value, True
                        break
    return genome, value


def fit_anchors(grid: BoxGrid, start: AnchorSet, fg_iou: float, *, budget: int | None = None,
                per_level: bool = True, search_boxes: int = 10000, generations: int = 400, seed: int = 0,
                finalists: int = 2, progress: bool = False) -> FitResult:
    """Search anchors for the boxes of ``grid`` (see the module docstring).

    Args:
        grid: all boxes, with their offsets to the anchor grid.
        start: the configured anchors (scored too; kept when nothing beats them).
        fg_iou: the RPN foreground IoU threshold (``model.rpn.iou_thresholds[1]``).
        budget: anchors per location; ``None``: ``start.per_location``.
        per_level: one scale list per level (else one shared list).
        search_boxes: boxes subsampled for the search (all if fewer).
        generations: evolution steps of each finalist layout (screening: a quarter of that).
        finalists: layouts that continue after screening.
        progress: show a progress bar (stderr).
    """
    t0 = time.perf_counter()
    budget = start.per_location if budget is None else int(budget)
    if len(grid) == 0:
        raise ValueError("no boxes to fit anchors to")
    rng = np.random.default_rng(seed)
    sample = grid if len(grid) <= search_boxes else grid.subset(np.sort(rng.choice(len(grid), search_boxes, replace=False)))
    sample = sample.astype(np.float32)  # faster; the final scores are float64 on all boxes
    # layouts are only ranked by the screening: a quarter of the sample does (at least 2000 boxes)
    n_screen = min(len(sample), max(2000, len(sample) // 4))
    screen_sample = sample.subset(rng.choice(len(sample), n_screen, replace=False)) if n_screen < len(sample) else sample
    sides, ratios = log_side(grid.wh), log_ratio(grid.wh)
    bounds = (sides.min() - math.log(2), sides.max() + math.log(2), ratios.min() - 0.1, ratios.max() + 0.1)
    shapes = [_Layout(s, r, grid.strides, per_level, *bounds) for s, r in layouts(budget)]
    screen = max(1, generations // 4)
    coordinate_cap = 8 * 2 * 12  # ~8 passes over 12 genes
    total = len(shapes) * (screen + 2) + min(finalists, len(shapes)) * (generations + coordinate_cap + 1)

    from tqdm import tqdm

    bar = tqdm(total=total, desc="anchor search", unit="eval", disable=not progress, leave=False)
    evaluations = 0
    states = []
    try:
        for layout in shapes:  # screening
            objective = _Objective(screen_sample, fg_iou, layout, bar.update)
            genome = layout.kmeans_init(grid)
            value = objective(genome)
            seeded = layout.encode(start)
            if seeded is not None and (seeded_value := objective(seeded)) > value:
                genome, value = seeded, seeded_value
            genome, value = _evolve(genome, value, objective, rng, screen)
            states.append([layout, genome, value, objective])
        states.sort(key=lambda s: -s[2])
        for state in states[:finalists]:
            layout, genome, _, screening = state
            objective = _Objective(sample, fg_iou, layout, bar.update)
            objective.evaluations = screening.evaluations
            state[3] = objective
            value = objective(genome)
            genome, value = _evolve(genome, value, objective, rng, generations, sigma=(0.1, 0.01))
            state[1:3] = _coordinate(genome, value, objective, coordinate_cap)
        evaluations = sum(s[3].evaluations for s in states)
    finally:
        bar.update(max(0, total - bar.n))
        bar.close()

    grid64 = grid.astype(np.float64)
    start_score = score(grid64, start, fg_iou)
    # the start competes only within the budget (a smaller budget must give fewer anchors)
    best, best_score = (start, start_score) if start.per_location <= budget else (None, None)
    candidates = []
    for layout, genome, value, objective in states:
        anchors = layout.decode(genome, digits=3)
        s = score(grid64, anchors, fg_iou)
        candidates.append({"layout": layout.name, "anchors": anchors.as_params(), "bpr": round(s.bpr, 4),
                           "mean_best_iou": round(s.mean_iou, 4),
                           "search_bpr": round(int(value) / max(1, len(objective.grid)), 4)})
        if best_score is None or s.value() > best_score.value():
            best, best_score = anchors, s
    return FitResult(start=start, start_score=start_score, fitted=best, fitted_score=best_score, budget=budget,
                     fg_iou=fg_iou, candidates=candidates, search_boxes=len(sample), evaluations=evaluations,
                     seconds=time.perf_counter() - t0)


def quick_fit(boxes: np.ndarray, image_hw: np.ndarray, strides: Sequence[int],
              scales: Sequence[float] | Sequence[Sequence[float]], aspect_ratios: Sequence[float], fg_iou: float,
              *, search_boxes: int = 2000, generations: int = 60, seed: int = 0,
              max_boxes: int = 200_000) -> FitResult:
    """A reduced search (fewer boxes and steps: about a second) at the budget of the given anchors,
    for the advice of the ``prepare`` stage's anchor-fit warning; ``python -m pipeline anchors``
    runs the full one. ``boxes`` ``(N, 4)`` xyxy and ``image_hw`` ``(N, 2)`` after the resize.

    The result is scored on all boxes up to ``max_boxes``, beyond that on a random sample of
    ``max_boxes`` (a BPR within ~0.1 point; the grid of a COCO-size split would cost ~0.3 GB)."""
    if len(boxes) > max_boxes:
        keep = np.sort(np.random.default_rng(seed).choice(len(boxes), max_boxes, replace=False))
        boxes, image_hw = np.asarray(boxes)[keep], np.asarray(image_hw)[keep]
    grid = BoxGrid.from_boxes(boxes, image_hw, strides)
    return fit_anchors(grid, AnchorSet.of(scales, aspect_ratios), fg_iou, search_boxes=search_boxes,
                       generations=generations, seed=seed)

"""How well the configured anchors can match the ground truth: "best possible recall".

For every non-crowd ground-truth box (in network-input pixels, i.e. after the training
resize) take its best IoU over the real anchor grid of an image padded to a multiple of
the largest stride. The box can become an RPN foreground only through an anchor with
IoU >= ``fg_iou`` (``model.rpn.iou_thresholds[1]``); the fraction of boxes that have one
is the best possible recall (BPR). Reported overall, per COCO size bucket (area after
resize < 32**2, < 96**2, else), per box shape and per class, with the mean best IoU.

Every box counts (no sampling): the best IoU is computed exactly from the anchor shapes at the
grid location nearest each box (:func:`best_anchor_iou_flat`), so a million boxes take seconds.

Shapes: ``N`` ground-truth boxes, ``A`` anchor shapes of one level, ``K`` anchor shapes of all levels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.records import Split

if TYPE_CHECKING:  # torch only for the annotations: `prepare` runs without importing it (~0.7 GB RSS)
    from torch import Tensor

SIZE_BUCKETS = (("small", 32.0**2), ("medium", 96.0**2), ("large", math.inf))
WARN_BELOW = 0.9


def best_anchor_iou(boxes_per_image: Sequence[Tensor | np.ndarray], image_sizes: Sequence[tuple[int, int]],
                    strides: Sequence[int], scales: Sequence[float] | Sequence[Sequence[float]],
                    aspect_ratios: Sequence[float]) -> np.ndarray:
    """Best IoU ``(N,)`` of each box with any anchor, boxes of all images concatenated in order.

    Args:
        boxes_per_image: ``(G_i, 4)`` xyxy boxes per image, in network-input pixels.
        image_sizes: ``(h, w)`` per image (after resize, before padding).
    """
    boxes, image_hw = _flatten(boxes_per_image, image_sizes)
    return best_anchor_iou_flat(boxes, image_hw, strides, scales, aspect_ratios)


def best_anchor_iou_flat(boxes: np.ndarray, image_hw: np.ndarray, strides: Sequence[int],
                         scales: Sequence[float] | Sequence[Sequence[float]], aspect_ratios: Sequence[float],
                         chunk: int = 1 << 15) -> np.ndarray:
    """Best IoU ``(N,)`` of each box with any anchor of its image's grid, exactly, in ``O(N x K)``.

    Args:
        boxes: ``(N, 4)`` xyxy in network-input pixels.
        image_hw: ``(N, 2)`` ``(h, w)`` of each box's image after resize (before padding).
        chunk: boxes per step; temporaries are ``(chunk, A)`` per level.

    Why exact without trying every anchor: for two axis-aligned boxes of fixed sizes, the overlap
    along x only shrinks as their centres move apart along x (likewise y), and the IoU grows with
    the overlap. Anchors of one shape sit on a Cartesian grid, so the best anchor of each shape is
    the one at the grid column and row nearest the box centre (clamped to the padded image's
    grid): :class:`pipeline.anchor_search.BoxGrid`, which the anchor search uses too. ``K`` =
    levels x scales x ratios shapes are tried per box instead of every anchor.
    """
    from pipeline.anchor_search.geometry import BoxGrid, anchor_shapes

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    image_hw = np.asarray(image_hw, dtype=np.float64).reshape(-1, 2)
    shapes = anchor_shapes(strides, scales, aspect_ratios)
    best = np.zeros(len(boxes))
    for start in range(0, len(boxes), chunk):
        grid = BoxGrid.from_boxes(boxes[start:start + chunk], image_hw[start:start + chunk], strides)
        best[start:start + chunk] = grid.best_iou(shapes)
    return best


def anchor_fit(boxes_per_image: Sequence[Tensor | np.ndarray], image_sizes: Sequence[tuple[int, int]],
               labels: Sequence[Tensor | np.ndarray] | None, strides: Sequence[int],
               scales: Sequence[float] | Sequence[Sequence[float]], aspect_ratios: Sequence[float],
               fg_iou: float, class_names: Sequence[str] | None = None,
               best_ious: Tensor | np.ndarray | None = None, suggest: bool = False) -> dict[str, Any]:
    """Best-possible-recall summary of the anchors for these boxes (see the module docstring).

    Args:
        boxes_per_image: ``(G_i, 4)`` xyxy non-crowd boxes per image, network-input pixels.
        image_sizes: ``(h, w)`` of each image after resize.
        labels: ``(G_i,)`` labels in ``1..C`` per image, or ``None`` for no per-class figures.
        Others: as :func:`anchor_fit_flat`.
    """
    boxes, image_hw = _flatten(boxes_per_image, image_sizes)
    flat_labels = None
    if labels is not None:
        flat_labels = np.concatenate([np.asarray(v, dtype=np.int64).reshape(-1) for v in labels]
                                     + [np.zeros(0, np.int64)])
    return anchor_fit_flat(boxes, image_hw, flat_labels, strides, scales, aspect_ratios, fg_iou,
                           class_names=class_names, best_ious=best_ious, suggest=suggest)


def anchor_fit_flat(boxes: np.ndarray, image_hw: np.ndarray, labels: np.ndarray | None, strides: Sequence[int],
                    scales: Sequence[float] | Sequence[Sequence[float]], aspect_ratios: Sequence[float],
                    fg_iou: float, class_names: Sequence[str] | None = None,
                    best_ious: Tensor | np.ndarray | None = None, suggest: bool = False) -> dict[str, Any]:
    """Best-possible-recall summary of the anchors for ``N`` boxes (see the module docstring).

    Args:
        boxes: ``(N, 4)`` xyxy non-crowd boxes, network-input pixels.
        image_hw: ``(N, 2)`` ``(h, w)`` of each box's image after resize.
        labels: ``(N,)`` labels in ``1..C``, or ``None`` for no per-class figures.
        strides, scales, aspect_ratios: as :class:`detector.anchors.AnchorGenerator`.
        fg_iou: the RPN foreground IoU threshold.
        class_names: names for labels ``1..C`` in ``by_class``.
        best_ious: ``(N,)`` from :func:`best_anchor_iou_flat` when already computed.
        suggest: when the BPR is below ``WARN_BELOW``, run a quick anchor search at the same budget
            (:func:`pipeline.anchor_search.quick_fit`, ~1 s) and name its result in the warning
            (also returned as ``suggestion``).

    Returns:
        ``{"bpr", "mean_best_iou", "num_boxes", "by_size", "by_shape", "by_class",
        "failing", "warnings", and the anchor settings}``; ``failing`` counts boxes below
        ``fg_iou`` by likely cause: ``too_small``, ``too_large``, ``elongated``,
        ``between_anchors`` (size and ratio covered, but no anchor lands close enough).
        Every box counts: nothing is sampled.
    """
    gt = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if best_ious is None:
        best_ious = best_anchor_iou_flat(gt, image_hw, strides, scales, aspect_ratios)
    best = np.asarray(best_ious, dtype=np.float64)
    w, h = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    area = w * h
    ratio = h / np.maximum(w, 1e-9)
    hit = best >= fg_iou
    result: dict[str, Any] = {
        "fg_iou": fg_iou, "strides": list(strides), "scales": _plain(scales), "aspect_ratios": list(aspect_ratios),
        **_summary(best, hit, np.ones_like(hit)),
    }
    lower = 0.0
    result["by_size"] = {}
    for name, upper in SIZE_BUCKETS:
        result["by_size"][name] = _summary(best, hit, (area >= lower) & (area < upper))
        lower = upper
    result["by_shape"] = {
        "tall (h/w >= 2)": _summary(best, hit, ratio >= 2),
        "near square": _summary(best, hit, (ratio > 0.5) & (ratio < 2)),
        "wide (h/w <= 0.5)": _summary(best, hit, ratio <= 0.5),
    }
    if labels is not None:
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        num = len(class_names) if class_names is not None else int(lab.max(initial=0))
        names = list(class_names) if class_names is not None else [str(i) for i in range(1, num + 1)]
        result["by_class"] = {names[c - 1]: _summary(best, hit, lab == c) for c in range(1, num + 1)}
    result["failing"] = _failing(np.sqrt(area[~hit]), ratio[~hit], strides, scales, aspect_ratios, fg_iou)
    if suggest and result["bpr"] is not None and result["bpr"] < WARN_BELOW:
        from pipeline.anchor_search import quick_fit

        from pipeline.anchor_search.thresholds import propose_iou_thresholds

        fit = quick_fit(gt, image_hw, strides, scales, aspect_ratios, fg_iou)
        fitted = fit.fitted.as_params()
        fitted_best = best_anchor_iou_flat(gt, image_hw, strides, fitted["scales"], fitted["aspect_ratios"])
        result["suggestion"] = {**fitted, "bpr": round(fit.fitted_score.bpr, 4), "budget": fit.budget,
                                "improved": fit.improved,
                                "iou_thresholds": propose_iou_thresholds(np.asarray(fitted_best)).as_params()}
    result["warnings"] = _warnings(result)
    return result


def _flatten(boxes_per_image: Sequence[Tensor | np.ndarray], image_sizes: Sequence[tuple[int, int]]
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 4)`` boxes of all images and the ``(N, 2)`` size of each box's image."""
    arrays = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes_per_image]
    boxes = np.concatenate(arrays + [np.zeros((0, 4))])
    sizes = np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2)
    return boxes, np.repeat(sizes, [len(a) for a in arrays], axis=0)


def _per_level(scales: Sequence[float] | Sequence[Sequence[float]], num_levels: int) -> list[list[float]]:
    if isinstance(scales[0], Sequence):  # one list per level
        return [[float(s) for s in level] for level in scales]  # type: ignore[union-attr]
    return [[float(s) for s in scales]] * num_levels  # type: ignore[arg-type]


def _summary(best: np.ndarray, hit: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    return {"num_boxes": n, "bpr": round(float(hit[mask].mean()), 4) if n else None,
            "mean_best_iou": round(float(best[mask].mean()), 4) if n else None}


def _failing(side: np.ndarray, ratio: np.ndarray, strides: Sequence[int],
             scales: Sequence[float] | Sequence[Sequence[float]], aspect_ratios: Sequence[float],
             fg_iou: float) -> dict[str, int]:
    """Classify boxes below ``fg_iou``. A concentric anchor of the box's shape but ``k`` times its
    area has IoU ``1/k``; one of its area but ``k`` times its ratio has IoU ``1/(2 sqrt(k) - 1)``."""
    per_level = _per_level(scales, len(strides))
    sides = [stride * s for stride, level in zip(strides, per_level) for s in level]
    lo, hi = min(sides) * math.sqrt(fg_iou), max(sides) / math.sqrt(fg_iou)
    max_ratio_factor = ((1 + fg_iou) / (2 * fg_iou)) ** 2
    mismatch = np.min(np.abs(np.log(ratio[:, None] / np.asarray(aspect_ratios)[None, :])), axis=1,
                      initial=np.inf)
    too_small, too_large = side < lo, side > hi
    elongated = ~too_small & ~too_large & (mismatch > math.log(max_ratio_factor))
    return {"too_small": int(too_small.sum()), "too_large": int(too_large.sum()),
            "elongated": int(elongated.sum()),
            "between_anchors": int((~too_small & ~too_large & ~elongated).sum())}


def _warnings(result: dict[str, Any]) -> list[str]:
    if result["bpr"] is None or result["bpr"] >= WARN_BELOW:
        return []
    failing, total = result["failing"], result["num_boxes"]
    head = (f"anchor fit: only {result['bpr']:.1%} of {total} boxes have an anchor with IoU >= "
            f"{result['fg_iou']} (best possible recall < {WARN_BELOW:.0%})")
    advice = {
        "too_small": "add smaller scales to model.anchors.scales (or a lower level to model.fpn_levels)",
        "too_large": "add larger scales to model.anchors.scales",
        "elongated": "add aspect ratios like 0.25/4 to model.anchors.aspect_ratios",
        "between_anchors": "add intermediate scales to model.anchors.scales or lower model.rpn.iou_thresholds",
    }
    causes = [f"{n} {key.replace('_', ' ')}: {advice[key]}"
              for key, n in sorted(failing.items(), key=lambda kv: -kv[1]) if n and n >= 0.02 * total]
    text = f"{head}. Failing boxes: " + "; ".join(causes) if causes else head
    s = result.get("suggestion")
    if s is not None and s["improved"]:
        text += (f". A quick anchor search at the same budget ({s['budget']} per location) reaches {s['bpr']:.1%} "
                 f"with --set model.anchors.scales={json.dumps(s['scales'], separators=(',', ':'))} "
                 f"--set model.anchors.aspect_ratios={json.dumps(s['aspect_ratios'], separators=(',', ':'))} "
                 f"--set model.rpn.iou_thresholds={json.dumps(s['iou_thresholds'], separators=(',', ':'))} "
                 f"(RPN thresholds re-fitted with the anchors: fitted anchors alone did not raise AP); "
                 f"`python -m pipeline anchors` runs the full search (reports/anchors.yaml, --apply)")
    elif s is not None:
        text += (f". A quick anchor search found nothing better at {s['budget']} anchors per location: "
                 f"try `python -m pipeline anchors --set anchors.budget={s['budget'] + 5}`")
    return [text]


def _plain(scales: Any) -> Any:
    return [_plain(s) for s in scales] if isinstance(scales, Sequence) else float(scales)


def gt_from_coco(coco: dict[str, Any], min_size: int, max_size: int
                 ) -> tuple[list[np.ndarray], list[tuple[int, int]], list[np.ndarray]]:
    """Non-crowd boxes ``(G_i, 4)`` xyxy, image sizes and labels of a COCO dict after the
    training resize (:func:`pipeline.data.resize.resized_size`), one entry per image."""
    from pipeline.data.resize import resized_size

    per_image: dict[int, list[dict]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image[ann["image_id"]].append(ann)
    boxes, sizes, labels = [], [], []
    for img in coco["images"]:
        new_h, new_w = resized_size(img["height"], img["width"], min_size, max_size)
        sx, sy = new_w / img["width"], new_h / img["height"]
        xywh = np.asarray([a["bbox"] for a in per_image[img["id"]]], dtype=np.float64).reshape(-1, 4)
        boxes.append(np.stack([xywh[:, 0] * sx, xywh[:, 1] * sy, (xywh[:, 0] + xywh[:, 2]) * sx,
                               (xywh[:, 1] + xywh[:, 3]) * sy], axis=1))
        sizes.append((new_h, new_w))
        labels.append(np.asarray([a["category_id"] for a in per_image[img["id"]]], dtype=np.int64))
    return boxes, sizes, labels


def gt_from_split(split: Split, min_size: int, max_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-crowd boxes ``(N, 4)`` xyxy after the training resize
    (:func:`pipeline.data.resize.resized_size`), the ``(N, 2)`` resized ``(h, w)`` of each
    box's image, and the ``(N,)`` labels; vectorised over all boxes."""
    from pipeline.data.resize import resized_size

    images, boxes = split.images, split.boxes
    keep = boxes.iscrowd == 0
    hw = np.stack([images.heights, images.widths], axis=1)  # (I, 2)
    unique, inverse = np.unique(hw, axis=0, return_inverse=True)  # a few hundred distinct sizes at most, usually
    new_hw = np.asarray([resized_size(h, w, min_size, max_size) for h, w in unique.tolist()],
                        dtype=np.int64).reshape(-1, 2)[inverse.reshape(-1)]  # (I, 2)
    rows = boxes.image[keep]
    scale = (new_hw[rows] / hw[rows])[:, ::-1]  # (N, 2) as (sx, sy)
    xywh = boxes.xywh[keep]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) * np.tile(scale, 2)
    return xyxy, new_hw[rows], boxes.labels[keep]


def plot_anchor_fit(fits: dict[str, dict[str, Any]], best_ious: dict[str, np.ndarray], path: str) -> None:
    """Histogram of best anchor IoU per split and BPR per size bucket / shape, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for split, ious in best_ious.items():
        axes[0].hist(ious, bins=np.linspace(0, 1, 41), alpha=0.6, label=f"{split} (BPR {fits[split]['bpr']})")
    fg = next(iter(fits.values()))["fg_iou"]
    axes[0].axvline(fg, color="k", linestyle="--", label=f"RPN foreground IoU {fg}")
    axes[0].set(xlabel="best anchor IoU per ground-truth box", ylabel="boxes")
    axes[0].legend()
    groups = [("by_size", k) for k, _ in SIZE_BUCKETS] + [("by_shape", k) for k in next(iter(fits.values()))["by_shape"]]
    x = np.arange(len(groups))
    for j, (split, fit) in enumerate(fits.items()):
        values = [fit[g][k]["bpr"] or 0.0 for g, k in groups]
        axes[1].bar(x + j * 0.4 - 0.2, values, width=0.4, label=split)
    axes[1].set_xticks(x, [k.split(" (")[0] for _, k in groups], rotation=20)
    axes[1].set(ylabel="best possible recall", ylim=(0, 1.05))
    axes[1].axhline(WARN_BELOW, color="k", linestyle=":")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

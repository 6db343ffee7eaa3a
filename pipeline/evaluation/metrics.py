"""COCO box metrics from ``faster-coco-eval``'s ``COCOeval``: summary stats, per-class AP, PR curves.

``faster_coco_eval`` is a drop-in ``COCOeval`` with the per-image matching and the accumulation
in C++ (pycocotools' pure-Python ``accumulate`` dominates evaluation at thousands of images;
torchmetrics switched to the same backend for it). Every number comes from ``COCOeval`` itself
(no private re-implementation); the tests check them against pycocotools, the reference, on
hand-built and random cases (equal within 1e-4).

``COCOeval.eval["precision"]`` has shape ``(T, R, K, A, M)``: ``T`` IoU thresholds 0.50:0.05:0.95,
``R`` 101 recall thresholds, ``K`` categories, ``A`` area ranges (all, small, medium, large),
``M`` max detections per image (1, 10, 100). ``-1`` marks "no ground truth there"; the same
convention carries into our metrics (a class or area range without ground truth scores -1).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO
from faster_coco_eval import COCOeval_faster as COCOeval

# Names of COCOeval.stats, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_AREA_ALL = 0  # index of areaRng "all"
_MAX_DETS = -1  # index of maxDets 100


def load_coco(gt: str | Path | COCO) -> COCO:
    """A ``COCO`` ground-truth object (``faster_coco_eval``'s) from a json path, or ``gt`` itself."""
    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ground-truth COCO json not found")
    return COCO(str(path))


def load_results(coco_gt: COCO, detections: list[dict[str, Any]]) -> COCO:
    """``coco_gt.loadRes(detections)`` (an empty list gives an empty result set).

    The detection dicts are copied: ``loadRes`` adds keys (``area``, ``id``, ...) in place.
    """
    return coco_gt.loadRes([dict(d) for d in detections])


def coco_metrics(gt: str | Path | COCO, detections: list[dict[str, Any]],
                 image_ids: list[int] | None = None,
                 exclude_image_ids: Collection[int] = ()) -> tuple[dict[str, Any], COCOeval]:
    """COCO box metrics for ``detections`` (COCO results format, xywh in original pixels).

    Args:
        gt: the ground-truth COCO json (path) or a loaded ``COCO``.
        detections: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``; may be empty.
        image_ids: evaluate only these images; default all of ``gt``.
        exclude_image_ids: images left out of the evaluation (files that could not be decoded).

    Returns:
        ``(metrics, cocoeval)``: ``metrics`` holds the 12 ``COCOeval.stats`` under :data:`STAT_NAMES`
        (``AP``, ``AP50``, ``AP75``, ...) and ``AP_per_class`` (class name -> AP@[.5:.95]);
        ``cocoeval`` is the evaluated, accumulated and summarized ``COCOeval``, with the
        printed 12-line table in ``cocoeval.summary_text``. No detections give 0 everywhere
        there is ground truth.
    """
    coco_gt = load_coco(gt)
    coco_dt = load_results(coco_gt, detections)
    lines: list[str] = []
    cocoeval = COCOeval(coco_gt, coco_dt, iouType="bbox", print_function=lambda *_: None)
    if image_ids is not None or exclude_image_ids:
        excluded = set(exclude_image_ids)
        chosen = coco_gt.getImgIds() if image_ids is None else image_ids
        cocoeval.params.imgIds = sorted(i for i in chosen if i not in excluded)
    cocoeval.evaluate()
    cocoeval.accumulate()
    cocoeval.print_function = lines.append
    cocoeval.summarize()
    cocoeval.summary_text = "".join(f"{line}\n" for line in lines)  # the familiar table, for logs
    metrics: dict[str, Any] = {name: float(v) for name, v in zip(STAT_NAMES, cocoeval.stats)}
    metrics["AP_per_class"] = per_class_ap(cocoeval)
    return metrics, cocoeval


def per_class_ap(cocoeval: COCOeval) -> dict[str, float]:
    """Class name -> AP@[.5:.95] (area all, 100 dets), the way ``summarize`` averages (-1: no GT)."""
    precision = cocoeval.eval["precision"]  # (T, R, K, A, M)
    names = _category_names(cocoeval)
    out = {}
    for k, cat_id in enumerate(cocoeval.params.catIds):
        p = precision[:, :, k, _AREA_ALL, _MAX_DETS]  # (T, R)
        p = p[p > -1]
        out[names[cat_id]] = float(p.mean()) if p.size else -1.0
    return out


def pr_curves(cocoeval: COCOeval, iou: float = 0.5) -> list[dict[str, Any]]:
    """Per-class precision at each of COCOeval's 101 recall thresholds, at IoU ``iou``.

    Returns rows ``{"class", "recall", "precision"}`` (area all, 100 dets); classes without
    ground truth are left out.
    """
    iou_thrs = cocoeval.params.iouThrs
    matches = np.flatnonzero(np.isclose(iou_thrs, iou))
    if matches.size == 0:
        raise ValueError(f"IoU {iou} is not one of COCOeval's thresholds {iou_thrs.tolist()}")
    t = int(matches[0])
    precision = cocoeval.eval["precision"][t, :, :, _AREA_ALL, _MAX_DETS]  # (R, K)
    names = _category_names(cocoeval)
    rows = []
    for k, cat_id in enumerate(cocoeval.params.catIds):
        if (precision[:, k] < 0).all():
            continue
        for recall, prec in zip(cocoeval.params.recThrs, precision[:, k]):
            rows.append({"class": names[cat_id], "recall": round(float(recall), 4),
                         "precision": round(float(prec), 6)})
    return rows


def _category_names(cocoeval: COCOeval) -> dict[int, str]:
    return {cat_id: cat["name"] for cat_id, cat in cocoeval.cocoGt.cats.items()}

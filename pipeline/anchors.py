"""``python -m pipeline anchors``: fit ``model.anchors`` to the prepared training boxes.

Reads ``data/prepared/train.json``, the ``model`` section (FPN levels, anchors, RPN foreground
IoU), ``data.resize`` and the ``anchors`` section; searches the anchor scales per level and
the aspect-ratio set under ``anchors.budget`` anchors per location for the highest best
possible recall (:mod:`pipeline.anchor_search`). Writes into ``reports/``:

- ``anchors.yaml``: the fitted ``model.anchors`` section and the ``model.rpn.iou_thresholds``
  proposed for them (:mod:`pipeline.anchor_search.thresholds`: fitted anchors raise every box's
  best IoU, so the matcher's thresholds move with them), mergeable into ``params.yaml``, and the
  ``dvc exp run -S ...`` line that trains with both,
- ``anchors.json``: before/after best possible recall per size, shape and class, the
  candidates of every layout, the search's settings and cost,
- ``anchors.png``: box shapes with both anchor sets, best-IoU histograms, BPR per group.

``--apply`` also writes the fitted scales, aspect ratios and RPN IoU thresholds into the params
file, keeping its comments and layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.params import Params, ParamsError

OUT_DIR = Path("reports")


class AnchorInputError(ValueError):
    """The prepared data cannot be read; the message names the file and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="data/prepared",
                        help="prepared data whose train.json the anchors are fitted to (default: data/prepared)")
    parser.add_argument("--out-dir", default=str(OUT_DIR),
                        help=f"where anchors.yaml/.json/.png go (default: {OUT_DIR})")
    parser.add_argument("--apply", action="store_true",
                        help="also write the fitted model.anchors and the proposed model.rpn.iou_thresholds into the params file")


def run(params: Params, args: argparse.Namespace) -> int:
    data_dir = Path(getattr(args, "data_dir", "data/prepared"))
    out_dir = Path(getattr(args, "out_dir", OUT_DIR))
    try:
        outcome = fit_and_report(params, data_dir=data_dir, out_dir=out_dir, progress=True)
    except (AnchorInputError, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(outcome["table"])
    result = outcome["result"]
    s0, s1 = result.start_score, result.fitted_score
    print(f"\nbest possible recall at IoU {result.fg_iou}: {s0.bpr:.4f} -> {s1.bpr:.4f} "
          f"(mean best IoU {s0.mean_iou:.4f} -> {s1.mean_iou:.4f}), {result.budget} anchors per location; "
          f"{result.evaluations} candidates on {result.search_boxes} boxes in {result.seconds:.1f} s")
    if result.improved:
        section = result.fitted.as_params()
        print(f"fitted model.anchors: scales {json.dumps(section['scales'])}, "
              f"aspect_ratios {json.dumps(section['aspect_ratios'])}")
    else:
        print("no better anchors found: the configured model.anchors are kept")
    t = outcome["thresholds"]
    print(f"proposed model.rpn.iou_thresholds {t.as_params()}: {t.coverage:.1%} of boxes have a fitted anchor at "
          f"IoU >= {t.foreground} (asked: {t.target_coverage:.0%}"
          f"{'' if t.reached else ', not reached even at the floor 0.4'}; background = foreground - margin)")
    for name, path in outcome["outputs"].items():
        print(f"{name}: {path}")
    print(f"train with them:  {outcome['command']}")
    if getattr(args, "apply", False):
        from pipeline.anchor_search.report import ANCHOR_KEYS
        from pipeline.tuning.results import apply_best_params

        target = Path(params.source_path or "params.yaml")
        changes = apply_best_params(outcome["outputs"]["anchors_yaml"], target, list(ANCHOR_KEYS))
        print(f"wrote {', '.join(changes)} into {target}")
    else:
        print("or write them into params.yaml:  python -m pipeline anchors --apply")
    return 0


def fit_and_report(params: Params, *, data_dir: Path, out_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Fit the anchors, propose RPN thresholds for them and write the reports; returns
    ``{"result", "thresholds", "rows", "table", "outputs", "command"}``.

    Raises:
        AnchorInputError: the prepared data is missing, unreadable or has no boxes.
        ParamsError: the params' model section is invalid.
    """
    from pipeline.anchor_search import report
    from pipeline.anchor_search.geometry import BoxGrid
    from pipeline.anchor_search.search import AnchorSet, fit_anchors
    from pipeline.data.anchor_fit import anchor_fit, gt_from_coco

    train_json = data_dir / "train.json"
    coco = _read_coco(train_json)
    class_names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    config = params.detector_config(num_classes=max(1, len(class_names)))
    resize = params.data.resize
    try:
        boxes, sizes, labels = gt_from_coco(coco, resize.min_size, resize.max_size)
    except (KeyError, TypeError, ValueError) as err:
        raise AnchorInputError(f"{train_json}: malformed image or annotation record ({err!r}); "
                               f"rerun `python -m pipeline prepare`") from err
    grid = BoxGrid.from_images(boxes, sizes, config.strides)
    if len(grid) == 0:
        raise AnchorInputError(f"{train_json}: no non-crowd boxes to fit anchors to")

    a = params.anchors
    start = AnchorSet.of(config.anchors.scales, config.anchors.aspect_ratios)
    fg_iou = float(config.rpn.iou_thresholds[1])
    t0 = time.perf_counter()
    result = fit_anchors(grid, start, fg_iou, budget=a.budget, per_level=a.per_level, search_boxes=a.search_boxes,
                         generations=a.generations, seed=a.seed, progress=progress)
    best = {"before": grid.best_iou(start.shapes(config.strides)),
            "after": grid.best_iou(result.fitted.shapes(config.strides))}
    thresholds = _proposed_thresholds(params, result, best["after"])
    fits = {}
    for when, anchors in (("before", start), ("after", result.fitted)):
        fit = anchor_fit(boxes, sizes, labels, config.strides, anchors.as_params()["scales"], anchors.aspect_ratios,
                         fg_iou, class_names=class_names, best_ious=best[when])
        fit.pop("warnings", None)
        fits[when] = fit
    rows = report.comparison_rows(fits["before"], fits["after"])
    command = report.exp_run_command(result.fitted, thresholds)

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "anchors_yaml": report.write_section(result, thresholds, out_dir / "anchors.yaml", train_json=str(train_json),
                                             resize=(resize.min_size, resize.max_size), levels=config.fpn_levels),
        "anchors_json": out_dir / "anchors.json",
        "anchors_png": report.plot_fit(out_dir / "anchors.png", grid.wh, config.strides, result,
                                       best["before"], best["after"], rows),
    }
    summary = {
        "bpr_before": round(result.start_score.bpr, 4), "bpr_after": round(result.fitted_score.bpr, 4),
        "mean_best_iou_before": round(result.start_score.mean_iou, 4),
        "mean_best_iou_after": round(result.fitted_score.mean_iou, 4),
        "improved": result.improved, "budget": result.budget, "fg_iou": fg_iou, "strides": list(config.strides),
        "resize": {"min_size": resize.min_size, "max_size": resize.max_size}, "train_json": str(train_json),
        "configured": start.as_params(), "fitted": result.fitted.as_params(), "dvc_exp_run": command,
        "iou_thresholds": {"configured": list(config.rpn.iou_thresholds), "proposed": thresholds.as_params(),
                           "coverage": thresholds.coverage, "target_coverage": thresholds.target_coverage,
                           "margin": params.anchors.bg_margin, "reached": thresholds.reached},
        "search": {"boxes": result.search_boxes, "per_level": a.per_level, "generations": a.generations,
                   "seed": a.seed, "evaluations": result.evaluations, "seconds": round(result.seconds, 2),
                   "total_seconds": round(time.perf_counter() - t0, 2)},
        "candidates": result.candidates, "table": rows, "before": fits["before"], "after": fits["after"],
    }
    outputs["anchors_json"].write_text(json.dumps(summary, indent=2) + "\n")
    return {"result": result, "thresholds": thresholds, "rows": rows, "table": report.format_table(rows),
            "outputs": outputs, "command": command}


def _proposed_thresholds(params: Params, result: Any, best_after: Any) -> Any:
    """The RPN thresholds for the fitted anchors (:mod:`pipeline.anchor_search.thresholds`), checked
    with the fitted section as params.yaml would load them (the model config validator)."""
    from detector import DetectorConfig
    from pipeline.anchor_search.thresholds import propose_iou_thresholds

    thresholds = propose_iou_thresholds(best_after, params.anchors.fg_coverage, params.anchors.bg_margin)
    rpn = {**(params.model.get("rpn") or {}), "iou_thresholds": thresholds.as_params()}
    DetectorConfig.from_dict({**params.model, "anchors": result.fitted.as_params(), "rpn": rpn}, num_classes=1)
    return thresholds


def _read_coco(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AnchorInputError(f"{path} not found: run `python -m pipeline prepare` first "
                               f"(the anchors are fitted to the prepared training split)")
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnchorInputError(f"{path}: not valid JSON ({err}); rerun `python -m pipeline prepare`") from err
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco, dict) or k not in coco]
    if missing:
        raise AnchorInputError(f"{path}: not a COCO file (missing {', '.join(missing)}); "
                               f"rerun `python -m pipeline prepare`")
    return coco

"""``evaluate`` stage: COCO metrics, PR curves and pictures for the trained model on the val split.

Reads the ``evaluate`` and ``data.resize`` params. Writes (paths relative to ``--out``, default
``reports/``): ``metrics.json`` (the DVC metric: the headline numbers of :data:`HEADLINE` and
``AP_<class>``), ``evaluation.json`` (everything: the 12 COCO stats, per-class AP, speed, counts),
``detections.json`` (COCO results, original pixels), ``pr_curve.csv`` + ``pr_curve.png``,
``per_class_ap.png`` and ``predictions/`` (``grid.png`` plus ``image_<id>.png`` per image), then logs
all of it into the MLflow run that trained the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.params import EvaluateParams, Params, ResizeParams

DEFAULT_MODEL = "models/model.pt"
DEFAULT_VAL = "data/prepared/val.json"
DEFAULT_OUT = "reports"
RUN_FILE = "models/mlflow_run.json"
# What `dvc metrics show/diff` compare: the COCO headline numbers, inference speed, and AP per class.
HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "images_per_s")

if TYPE_CHECKING:  # torch is imported inside functions: `python -m pipeline --help` stays fast
    import torch
    from torch import nn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"checkpoint or MLflow model URI (default: {DEFAULT_MODEL})")
    parser.add_argument("--val", default=DEFAULT_VAL, help=f"COCO json of the split to evaluate (default: {DEFAULT_VAL})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"reports folder (default: {DEFAULT_OUT})")
    parser.add_argument("--run-file", default=RUN_FILE,
                        help=f"training's MLflow run file to log into (default: {RUN_FILE})")


def run(params: Params, args: argparse.Namespace) -> int:
    from pipeline.inference.loading import load_model, resolve_device
    from pipeline.tracking.evaluation import TrackingError, log_to_training_run
    from pipeline.tracking.uri import resolve_tracking_uri

    if not Path(args.val).is_file():
        print(f"error: {args.val} not found (run `python -m pipeline prepare` or `dvc repro` first)", file=sys.stderr)
        return 2
    # one HTTP retry inside MLflow; the stage's own retries (evaluate.tracking_retries) wait longer
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    device = resolve_device(params.evaluate.device)
    try:
        model = load_model(args.model, tracking_uri=resolve_tracking_uri(params.mlflow.tracking_uri), device=device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics, written = evaluate(model, args.val, args.out, params.evaluate, params.data.resize, device=device)
    try:
        log_to_training_run(args.run_file, metrics, written, retries=params.evaluate.tracking_retries,
                            backoff_s=params.evaluate.tracking_backoff_s)
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def evaluate(model: nn.Module, val_json: str | Path, out_dir: str | Path, settings: EvaluateParams,
             resize: ResizeParams, device: str | torch.device = "cpu") -> tuple[dict[str, Any], list[Path]]:
    """Evaluate ``model`` (on ``device``) on ``val_json`` and write the reports.

    Returns ``(metrics, paths written)``.
    """
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.evaluation import InferenceTiming, coco_metrics, pr_curves, run_inference
    from pipeline.evaluation.pictures import draw_examples, image_grid
    from pipeline.evaluation.plots import plot_per_class_ap, plot_pr_curves, write_pr_csv

    dataset = CocoDetectionDataset(
        val_json, transforms=build_transforms(train=False, min_size=resize.min_size, max_size=resize.max_size))
    timing = InferenceTiming()
    detections = run_inference(model, dataset, batch_size=settings.batch_size, device=device,
                               score_threshold=settings.score_threshold, progress=True, timing=timing)
    metrics, cocoeval = coco_metrics(dataset.coco_json_path, detections)
    metrics.update(timing.as_metrics(), num_images=len(dataset), num_detections=len(detections))
    print(cocoeval.summary_text, end="")
    print(f"{timing.images_per_s:.2f} images/s, {timing.ms_per_image:.1f} ms/image on {device}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("metrics.json", "evaluation.json", "detections.json", "pr_curve.csv",
                                           "pr_curve.png", "per_class_ap.png", "predictions")}
    paths["metrics.json"].write_text(json.dumps(headline_metrics(metrics), indent=2) + "\n")
    paths["evaluation.json"].write_text(json.dumps(metrics, indent=2) + "\n")
    paths["detections.json"].write_text(json.dumps(detections))
    rows = pr_curves(cocoeval, iou=0.5)
    write_pr_csv(rows, paths["pr_curve.csv"])
    plot_pr_curves(rows, paths["pr_curve.png"])
    plot_per_class_ap(metrics["AP_per_class"], paths["per_class_ap.png"])

    pictures_dir = paths["predictions"]
    shutil.rmtree(pictures_dir, ignore_errors=True)  # no stale pictures from an earlier run
    pictures_dir.mkdir()
    class_names = {cat_id: cat["name"] for cat_id, cat in cocoeval.cocoGt.cats.items()}
    examples = draw_examples(dataset, detections, cocoeval.cocoGt, class_names, settings.num_pictures,
                             min_score=settings.draw_score_threshold)
    for image_id, picture in examples:
        # not just "<id>.png": DVC renders all-digit names in a folder as steps of one image and
        # crashes (`dvc plots show`: '<' between None and int) when such names sit next to grid.png
        picture.save(pictures_dir / f"image_{image_id}.png")
    if examples:
        image_grid([picture for _, picture in examples]).save(pictures_dir / "grid.png")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return metrics, list(paths.values())


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The DVC metric: :data:`HEADLINE` plus ``AP_<class>`` (-1: no ground truth of that class)."""
    out = {key: metrics[key] for key in HEADLINE if key in metrics}
    out |= {f"AP_{name}": ap for name, ap in metrics.get("AP_per_class", {}).items()}
    return out

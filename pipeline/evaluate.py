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

from pipeline.params import DataParams, EvaluateParams, Params, ResizeParams

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
    from pipeline.data.errors import ImageError
    from pipeline.driver.cluster import ensure_ray
    from pipeline.inference.loading import load_model, resolve_device
    from pipeline.tracking.evaluation import TrackingError, log_to_training_run
    from pipeline.tracking.uri import resolve_tracking_uri

    if not Path(args.val).is_file():
        print(f"error: {args.val} not found (run `python -m pipeline prepare` or `dvc repro` first)", file=sys.stderr)
        return 2
    # one HTTP retry inside MLflow; the stage's own retries (evaluate.tracking_retries) wait longer
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    # on the cluster, the driver only loads the model to put it into Ray's object store
    device = resolve_device("cpu" if params.evaluate.cluster else params.evaluate.device)
    try:
        model = load_model(args.model, tracking_uri=resolve_tracking_uri(params.mlflow.tracking_uri), device=device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = params.evaluate.cluster and ensure_ray(params.ray.address)
    try:
        metrics, written = evaluate(model, args.val, args.out, params.evaluate, params.data.resize, device=device,
                                    data=params.data)
    except ImageError as err:  # data.bad_images: fail, or more than data.max_bad_fraction undecodable
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if started:
            import ray

            ray.shutdown()
    try:
        log_to_training_run(args.run_file, metrics, written, retries=params.evaluate.tracking_retries,
                            backoff_s=params.evaluate.tracking_backoff_s)
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def evaluate(model: nn.Module, val_json: str | Path, out_dir: str | Path, settings: EvaluateParams,
             resize: ResizeParams, device: str | torch.device = "cpu", *, data: DataParams | None = None
             ) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate ``model`` on ``val_json`` and write the reports.

    With ``settings.cluster`` the inference runs on the Ray cluster (Ray must be initialised; ``device``
    is then only where ``model`` is); else in this process on ``device``. ``data`` gives
    ``exif_orientation``, ``bad_images`` and ``max_bad_fraction`` (default: their defaults): images that
    cannot be decoded are printed, listed under ``skipped`` in ``evaluation.json``, counted as
    ``excluded_images`` in ``metrics.json`` and left out of the metrics.

    Returns ``(metrics, paths written)``.

    Raises:
        ImageError: an image cannot be decoded under ``data.bad_images: fail``, or more than
            ``data.max_bad_fraction`` of them cannot (:mod:`pipeline.data.errors`).
    """
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.evaluation import coco_metrics, pr_curves
    from pipeline.evaluation.pictures import draw_examples, image_grid
    from pipeline.evaluation.plots import plot_per_class_ap, plot_pr_curves, write_pr_csv

    data = data or DataParams()
    dataset = CocoDetectionDataset(
        val_json, transforms=build_transforms(train=False, min_size=resize.min_size, max_size=resize.max_size),
        exif_orientation=data.exif_orientation, on_bad_image="skip" if data.bad_images == "skip" else "fail")
    if settings.cluster:
        detections, info = _detect_on_cluster(model, dataset, settings, resize, data)
    else:
        detections, info = _detect_in_process(model, dataset, settings, device, data)
    skipped = {Path(item["path"]) for item in info.get("skipped", [])}
    readable = [i for i in range(len(dataset)) if dataset.image_path(i).absolute() not in skipped]
    metrics, cocoeval = coco_metrics(dataset.coco_json_path, detections,
                                     image_ids=[dataset.image_ids[i] for i in readable] if skipped else None)
    metrics.update(info, num_detections=len(detections))
    if skipped:
        print(f"the metrics exclude {len(skipped)} of the {len(dataset)} images (they cannot be decoded)")
    print(cocoeval.summary_text, end="")
    print(f"{metrics['images_per_s']:.2f} images/s, {metrics['ms_per_image']:.1f} ms/image per "
          f"{'replica' if settings.cluster else device}")

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
    drawable = _subset(dataset, readable) if skipped else dataset  # pictures of readable images only
    examples = draw_examples(drawable, detections, cocoeval.cocoGt, class_names, settings.num_pictures,
                             min_score=settings.draw_score_threshold)
    for image_id, picture in examples:
        # not just "<id>.png": DVC renders all-digit names in a folder as steps of one image and
        # crashes (`dvc plots show`: '<' between None and int) when such names sit next to grid.png
        picture.save(pictures_dir / f"image_{image_id}.png")
    if examples:
        image_grid([picture for _, picture in examples]).save(pictures_dir / "grid.png")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return metrics, list(paths.values())


def _subset(dataset: Any, indices: list[int]) -> Any:
    """``torch.utils.data.Subset`` (torch is imported here, not when the CLI starts)."""
    from torch.utils.data import Subset

    return Subset(dataset, indices)


def _detect_in_process(model: nn.Module, dataset: Any, settings: EvaluateParams, device: str | torch.device,
                       data: DataParams) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """COCO results of ``model`` on ``dataset`` in this process, and the run's counts, speed and
    skipped images (as :func:`_detect_on_cluster` gives them)."""
    from pipeline.data.decode import check_bad_fraction
    from pipeline.evaluation import InferenceTiming, run_inference

    timing, bad = InferenceTiming(), []
    detections = run_inference(model, dataset, batch_size=settings.batch_size, device=device,
                               score_threshold=settings.score_threshold, progress=True, timing=timing, skipped=bad)
    skipped = [{"path": str(Path(b["file"]).absolute()), "error": b["error"]} for b in bad]
    for item in skipped:
        print(f"skipped {item['path']}: {item['error']}", file=sys.stderr)
    check_bad_fraction({item["path"]: item["error"] for item in skipped}, len(dataset), data.max_bad_fraction,
                       f"images of {dataset.coco_json_path}")
    return detections, {**timing.as_metrics(), "num_images": len(dataset) - len(skipped), "skipped": skipped,
                        "num_skipped": len(skipped)}


def _detect_on_cluster(model: nn.Module, dataset: Any, settings: EvaluateParams, resize: ResizeParams,
                       data: DataParams) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """COCO results of ``model`` on ``dataset``'s images from the Ray cluster (sorted by image id), and
    the run's counts, speed (per replica), skipped images and the nodes that decoded and detected."""
    from pipeline.evaluation.batch_inference import StreamStats, stream_detections

    # absolute: Ray's tasks and actors run in folders of their own (multi-node: the same path on every node)
    # the annotated (width, height) picks the EXIF frame, as in training (pipeline.data.decode)
    items = [{"id": image_id, "path": str(dataset.image_path(i).absolute()),
              **dict(zip(("ann_width", "ann_height"), dataset.annotated_size(i)))}
             for i, image_id in enumerate(dataset.image_ids)]
    stats = StreamStats()
    detections = []
    for row in stream_detections(items, model, settings, resize, stats=stats, bad_images=data.bad_images,
                                 max_bad_fraction=data.max_bad_fraction, exif_orientation=data.exif_orientation,
                                 desc="evaluate"):
        detections += row["detections"]
    detections.sort(key=lambda det: det["image_id"])  # stable: each image's detections keep their order
    return detections, stats.as_dict()


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The DVC metric: :data:`HEADLINE` plus ``AP_<class>`` (-1: no ground truth of that class)."""
    out = {key: metrics[key] for key in HEADLINE if key in metrics}
    out["excluded_images"] = metrics.get("num_skipped", 0)  # left out of the metrics: they cannot be decoded
    out |= {f"AP_{name}": ap for name, ap in metrics.get("AP_per_class", {}).items()}
    return out

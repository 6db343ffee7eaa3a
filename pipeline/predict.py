"""``predict`` command: detections for arbitrary images, streamed to JSON Lines, plus overlays for a sample.

``python -m pipeline predict --model PATH|models:/NAME@ALIAS --images INPUT... --out DIR``; each INPUT is
an image file, a folder (its image files), a glob (``'photos/**/*.jpg'``) or a ``.txt`` list of paths (one
per line, relative to the list's folder). On the Ray cluster (``evaluate.cluster``, ``ray.address``) as
``evaluate`` runs, else in this process. Writes, as results arrive:

- ``DIR/predictions.jsonl``: one line per readable image, ``{"id", "path", "file_name", "height",
  "width", "detections": [{"bbox": [x, y, w, h] in original pixels, "score", "category_id",
  "category_name"}]}``;
- ``DIR/summary.json``: counts, ``categories``, the ``skipped`` files with the reason, speed, and the
  Ray nodes that decoded and detected;
- ``DIR/<name>.pred.png`` for the first ``--draw`` images (the image with its detections, a legend below).

Images are resized with ``data.resize`` like in training. Unreadable files follow ``data.bad_images``
(skip: listed on stderr and in ``summary.json``). Exit code 0: all read; 1: some files were skipped, or
more than ``data.max_bad_fraction`` (the others processed); 2: nothing to do or the model could not be loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pipeline.params import Params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models/model.pt",
                        help="detector checkpoint, or an MLflow model URI such as models:/NAME@ALIAS or models:/NAME/VERSION "
                             "(tracking URI: mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--images", nargs="+", required=True, metavar="INPUT",
                        help="image files, folders (their image files, not recursive), globs (quote them) "
                             "and/or .txt lists of image paths")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="keep (and draw) detections at least this confident "
                             "(default: evaluate.draw_score_threshold)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: evaluate.batch_size")
    parser.add_argument("--draw", type=int, default=None, metavar="N",
                        help="overlays for the first N images read (default: evaluate.num_pictures)")


def run(params: Params, args: argparse.Namespace) -> int:
    from pipeline.data.errors import ImageError
    from pipeline.driver.cluster import ensure_ray
    from pipeline.inference.images import collect_images
    from pipeline.inference.loading import checkpoint_bytes, load_model, resolve_device
    from pipeline.tracking.uri import resolve_tracking_uri

    threshold = params.evaluate.draw_score_threshold if args.score_threshold is None else args.score_threshold
    batch_size = args.batch_size or params.evaluate.batch_size
    if not 0.0 <= threshold < 1.0 or batch_size <= 0:
        print(f"error: --score-threshold must be in [0, 1) and --batch-size > 0 (got {threshold}, {batch_size})",
              file=sys.stderr)
        return 2
    data = params.data
    policy = {"bad_images": data.bad_images, "max_bad_fraction": data.max_bad_fraction,
              "exif_orientation": data.exif_orientation}
    paths = collect_images(args.images)
    if not paths:
        print(f"error: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 2
    # on the cluster, the replicas build the model from the checkpoint's bytes: this process never imports torch
    cluster = params.evaluate.cluster
    device = "cpu" if cluster else resolve_device(params.evaluate.device)
    uri = resolve_tracking_uri(params.mlflow.tracking_uri)
    try:
        model = checkpoint_bytes(args.model, tracking_uri=uri) if cluster else load_model(args.model, tracking_uri=uri,
                                                                                           device=device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = cluster and ensure_ray(params.ray.address)
    settings = dataclasses.replace(params.evaluate, batch_size=batch_size, score_threshold=threshold)
    try:
        summary = predict(model, paths, Path(args.out), settings, params.data.resize, device=device,
                          draw=params.evaluate.num_pictures if args.draw is None else args.draw, **policy)
    except ImageError as err:  # data.bad_images: fail, or more than data.max_bad_fraction unreadable
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if started:
            import ray

            ray.shutdown()
    if summary["skipped"]:  # within data.max_bad_fraction (else the policy stopped the run above): listed
        print(f"{summary['num_skipped']} of {summary['num_images']} files could not be read (listed above and "
              f"under 'skipped' in {Path(args.out) / 'summary.json'})", file=sys.stderr)
    return 0


def predict(model, paths: list[Path], out: Path, settings, resize, *, device="cpu", draw: int = 0,
            bad_images: str = "skip", max_bad_fraction: float = 0.001, exif_orientation: str = "apply") -> dict:
    """Detect on ``paths`` (on the Ray cluster when ``settings.cluster``; Ray must then be initialised) and
    write ``predictions.jsonl`` line by line as results arrive, overlays for the first ``draw`` images read,
    and ``summary.json``. Photos with an EXIF orientation are turned upright (``exif_orientation: apply``)
    and their boxes are in that frame, the one the user sees. ``model``: the detector, or (on the cluster)
    its checkpoint's bytes. Returns the summary."""
    from pipeline.evaluation.batch_inference import StreamStats, class_names_of_model, stream_detections

    out.mkdir(parents=True, exist_ok=True)
    class_names = class_names_of_model(model, settings)
    # absolute: Ray's tasks and actors run in folders of their own (multi-node: the same path on every node)
    items = [{"id": image_id, "path": str(Path(path).absolute())} for image_id, path in enumerate(paths, start=1)]
    stats = StreamStats()
    policy = {"stats": stats, "bad_images": bad_images, "max_bad_fraction": max_bad_fraction,
              "exif_orientation": exif_orientation}
    if settings.cluster:
        rows = stream_detections(items, model, settings, resize, desc="predict", **policy)
    else:
        from pipeline.data.transforms import build_transforms
        from pipeline.evaluation.predictor import local_detections

        rows = local_detections(items, model, transforms=build_transforms(False, resize.min_size, resize.max_size),
                                score_threshold=settings.score_threshold, batch_size=settings.batch_size,
                                device=device, progress=True, **policy)
    drawn: set[str] = set()
    try:
        with (out / "predictions.jsonl").open("w") as lines:
            for row in rows:
                _name_detections(row, class_names)
                if len(drawn) < draw:
                    row["rendered"] = _draw(row, out, drawn, class_names, settings.score_threshold, exif_orientation)
                lines.write(json.dumps(row) + "\n")
    finally:  # also when the bad-image policy stops the run: the summary lists what was skipped
        summary = {**stats.as_dict(), "categories": [{"id": i, "name": n} for i, n in sorted(class_names.items())]}
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{stats.images - len(stats.skipped)} images -> {out / 'predictions.jsonl'}")
    return summary


def _name_detections(row: dict, class_names: dict[int, str]) -> None:
    row["file_name"] = Path(row["path"]).name
    for det in row["detections"]:
        del det["image_id"]  # the row's id
        det["category_name"] = class_names.get(det["category_id"], str(det["category_id"]))


def _draw(row: dict, out: Path, drawn: set[str], class_names: dict[int, str], score_threshold: float,
          exif_orientation: str) -> str:
    """Save the image of ``row`` with its detections as ``<stem>.pred.png`` (made unique); its name."""
    from pipeline.evaluation.pictures import annotate
    from pipeline.inference.images import read_image

    name = f"{Path(row['path']).stem}.pred.png"
    name = name if name not in drawn else f"{Path(row['path']).stem}.{row['id']}.pred.png"
    drawn.add(name)
    annotate(read_image(Path(row["path"]), exif_orientation), row["detections"], class_names,
             score_threshold=score_threshold).save(out / name)
    return name

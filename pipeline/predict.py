"""``predict`` command: detections for arbitrary images, as COCO-style json plus rendered pictures.

``python -m pipeline predict --model PATH|models:/NAME@ALIAS --images FILE_OR_DIR... --out DIR``
writes ``DIR/detections.json`` (``images`` with file names and sizes, ``annotations`` with
``bbox`` xywh in original pixels, ``score``, ``category_id`` and ``category_name``, ``categories``,
and the ``failed`` files with the reason) and ``DIR/<name>.pred.png`` per image (the image with its
detections, a legend strip below). Images are resized with ``data.resize`` like in training. Exit code 0: all read; 1: some files could not be read
(named on stderr, the others processed); 2: nothing to do or the model could not be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.params import Params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models/model.pt",
                        help="detector checkpoint, or an MLflow model URI such as models:/NAME@ALIAS or models:/NAME/VERSION "
                             "(tracking URI: mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--images", nargs="+", required=True, metavar="FILE_OR_DIR",
                        help="image files and/or folders (their image files, not recursive)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="keep (and draw) detections at least this confident "
                             "(default: evaluate.draw_score_threshold)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: evaluate.batch_size")


def run(params: Params, args: argparse.Namespace) -> int:
    from pipeline.data.transforms import build_transforms
    from pipeline.evaluation.pictures import annotate
    from pipeline.evaluation.predictor import predict_images
    from pipeline.inference.images import collect_images
    from pipeline.inference.loading import class_names_of, load_model, resolve_device
    from pipeline.tracking.uri import resolve_tracking_uri

    threshold = params.evaluate.draw_score_threshold if args.score_threshold is None else args.score_threshold
    batch_size = args.batch_size or params.evaluate.batch_size
    if not 0.0 <= threshold < 1.0 or batch_size <= 0:
        print(f"error: --score-threshold must be in [0, 1) and --batch-size > 0 (got {threshold}, {batch_size})",
              file=sys.stderr)
        return 2
    paths = collect_images(args.images)
    if not paths:
        print(f"error: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 2
    device = resolve_device(params.evaluate.device)
    try:
        model = load_model(args.model, tracking_uri=resolve_tracking_uri(params.mlflow.tracking_uri), device=device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    class_names = class_names_of(model)
    used_names: set[str] = set()

    def render(record, image, detections):
        name = f"{Path(record['file_name']).stem}.pred.png"
        if name in used_names:  # same file name from two folders
            name = f"{Path(record['file_name']).stem}.{record['id']}.pred.png"
        used_names.add(name)
        annotate(image, detections, class_names, score_threshold=threshold).save(out / name)
        record["rendered"] = name

    resize = params.data.resize
    result = predict_images(model, paths, transforms=build_transforms(False, resize.min_size, resize.max_size),
                            class_names=class_names, score_threshold=threshold, batch_size=batch_size,
                            device=device, on_image=render, progress=True)
    (out / "detections.json").write_text(json.dumps(result.to_dict(), indent=1))
    print(f"{len(result.annotations)} detections in {len(result.images)} images -> {out / 'detections.json'}")
    for failure in result.failed:
        print(f"error: could not read {failure['path']}: {failure['error']}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} of {len(paths)} files could not be read (listed above and under "
              f"'failed' in {out / 'detections.json'})", file=sys.stderr)
        return 1
    return 0

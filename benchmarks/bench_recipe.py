"""Training recipes side by side at equal epochs: our detector trained once per recipe, same data, seed and schedule.

    python benchmarks/bench_recipe.py DATA_DIR [--params params.yaml] [--set KEY=VALUE ...] [--epochs N]
        [--recipe NAME:KEY=VALUE,KEY=VALUE ...] [--max-images N] [--max-val-images N] [--out FILE]

Each ``--recipe`` names a variant of the ``train.augment`` keys (``KEY`` relative to ``train.augment``;
values parsed as YAML, lists with ``;`` for ``,``: ``scale_jitter=[0.75;1.25]``); the first one is the
reference the others' ratios are computed against. Default: ``old`` (the seed's recipe: resize and a
horizontal flip, ``train.augment`` as in params.yaml) and ``full`` (scale jitter [0.75, 1.25], IoU crop 0.3,
zoom-out 0.3 up to 1.5x, photometric distortion 0.5, horizontal flip 0.5). Every run goes through the
``train`` stage's code path (``pipeline.driver.fit``, Ray Train DDP with ``ray.num_workers``) and is
scored by ``pipeline.evaluation.evaluate_model`` on ``val.json`` and, when DATA_DIR has one, on the
held-out ``test.json`` (``data.test_fraction``; the photo set's builder writes one too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

DEFAULT_RECIPES = [
    "old:",
    "full:scale_jitter=[0.75;1.25],iou_crop_prob=0.3,zoom_out_prob=0.3,zoom_out_max=1.5,photometric_prob=0.5",
]


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` -> ``(NAME, {"train.augment.key": value})``."""
    name, _, body = text.partition(":")
    if not name:
        raise ValueError(f"--recipe {text!r}: expected NAME:key=value,...")
    overrides = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--recipe {text!r}: {item!r} is not key=value")
        overrides[f"train.augment.{key.strip()}"] = yaml.safe_load(value.replace(";", ","))
    return name, overrides


def evaluate_split(model: Any, json_path: Path, params: Any) -> dict[str, float]:
    import torch

    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.evaluation import evaluate_model

    resize = params.data.resize
    dataset = CocoDetectionDataset(json_path, transforms=build_transforms(False, resize.min_size, resize.max_size))
    torch.set_num_threads(max(1, int(params.ray.cpus_per_worker) * params.ray.num_workers))
    metrics = evaluate_model(model, dataset, batch_size=params.evaluate.batch_size, score_threshold=0.0)
    return {k: round(float(metrics[k]), 4) for k in ("AP", "AP50", "AP75")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="a prepared COCO folder (train.json, val.json[, test.json])")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--recipe", dest="recipes", action="append", default=None, metavar="NAME:KEY=VALUE,...")
    parser.add_argument("--max-images", type=int, default=None, help="train on the first N train images")
    parser.add_argument("--max-val-images", type=int, default=None, help="evaluate on the first N val images")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    from bench_quality import subset, train_ours

    from pipeline import driver
    from pipeline.params import ParamsError, load_params

    work = Path(tempfile.mkdtemp(prefix="bench-recipe-"))
    fixed = [f"train.epochs={args.epochs}", "train.val_every=0", f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
             "mlflow.log_model=false", "mlflow.registered_model_name=null", "mlflow.experiment_name=bench-recipe"]
    try:
        recipes = [parse_recipe(r) for r in (args.recipes or DEFAULT_RECIPES)]
        runs = [(name, load_params(args.params, [*args.overrides, *fixed, *(f"{k}={json.dumps(v)}" for k, v in o.items())]))
                for name, o in recipes]
    except (ParamsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    data_dir = subset(args.data_dir.resolve(), work / "data", args.max_images, args.max_val_images)
    splits = [s for s in ("val", "test") if (data_dir / f"{s}.json").is_file()]
    print(f"data: {data_dir}, {args.epochs} epochs per recipe; load average "
          f"{Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    started = driver.ensure_ray(runs[0][1].ray.address)
    rows = []
    try:
        for name, params in runs:
            t0 = time.perf_counter()
            model, summary = train_ours(params, data_dir, work / "ray", f"recipe-{name}-{int(t0)}")
            row = {"recipe": name, "augment": params.to_dict()["train"]["augment"], **summary,
                   "wall_s": round(time.perf_counter() - t0, 1)}
            row |= {split: evaluate_split(model, data_dir / f"{split}.json", params) for split in splits}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if started:
            import ray

            ray.shutdown()
    head = f"{'recipe':10} {'train s':>8} " + " ".join(f"{s + ' ' + k:>10}" for s in splits for k in ("AP", "AP50"))
    print(head + "\n" + "-" * len(head))
    for row in rows:
        print(f"{row['recipe']:10} {row['train_time_s']:>8.0f} "
              + " ".join(f"{row[s][k]:>10.3f}" for s in splits for k in ("AP", "AP50")))
    for row in rows[1:]:
        ratios = [row[s][k] / rows[0][s][k] if rows[0][s][k] > 0 else float("nan") for s in splits for k in ("AP", "AP50")]
        print(f"{row['recipe'] + '/' + rows[0]['recipe']:19} " + " ".join(f"{r:>9.2f}x" for r in ratios))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

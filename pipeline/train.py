"""``python -m pipeline train``: the DVC ``train`` stage.

Reads ``model``, ``train``, ``ray``, ``mlflow`` and ``data.resize`` from the params, trains with
Ray Train (:func:`pipeline.training.fit`) and writes:

- ``models/model.pt``: a ``detector`` checkpoint with the class names,
- ``models/mlflow_run.json``: ``{"run_id", "tracking_uri", "experiment_id"}`` so evaluation
  logs into the same MLflow run,
- ``reports/train.json`` (the summary), ``reports/train_metrics.json`` (the DVC metric: ``images_per_s``
  and ``train_time_s``), ``reports/train_curve.csv`` (DVC plot), ``reports/loss_curve.png``.

Rerunning with the same params and data resumes the interrupted Ray run of the same name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pipeline.params import Params

MODEL_PATH = Path("models/model.pt")
MLFLOW_RUN_PATH = Path("models/mlflow_run.json")
REPORTS_DIR = Path("reports")
HEADLINE = ("images_per_s", "train_time_s")  # reports/train_metrics.json: what `dvc metrics` compares
# logged to the MLflow run when present (the data stage writes the reports)
ARTIFACTS = ["reports/data.json", "reports/anchor_fit.json", "reports/anchor_fit.png"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="data/prepared",
                        help="prepared data with train.json/val.json (default: data/prepared)")
    parser.add_argument("--run-name", default=None,
                        help="Ray run name (default: train-<hash of the params and data>); "
                             "an existing run of that name is resumed")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new run even if an interrupted one with these params exists")


def run(params: Params, args: argparse.Namespace) -> int:
    from pipeline.training import driver
    from pipeline.training.loop import NonFiniteLossError

    root = Path.cwd()
    data_dir = Path(getattr(args, "data_dir", "data/prepared"))
    run_name = getattr(args, "run_name", None) or driver.default_run_name(params, data_dir)
    if getattr(args, "fresh", False):
        run_name += time.strftime("-%Y%m%d-%H%M%S")
    storage_path = driver.resolve_storage_path(params.ray.storage_path, root)
    tags = {"dvc_stage": os.environ.get("DVC_STAGE", "train" if os.environ.get("DVC_ROOT") else "none")}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    artifacts = [Path(params.source_path or "params.yaml"), *map(Path, ARTIFACTS)]

    _say(f"run {run_name}: {params.ray.num_workers} worker(s), storage {storage_path}")
    started = driver.ensure_ray(params.ray.address)
    try:
        result = driver.fit(params, run_name=run_name, storage_path=storage_path, data_dir=data_dir,
                            reports_dir=REPORTS_DIR, artifacts=artifacts, tags=tags, root=root)
    except (driver.PreflightError, driver.TrainingError, NonFiniteLossError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if started:
            import ray

            ray.shutdown()

    from detector import save_checkpoint

    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(MODEL_PATH, result.model, class_names=result.class_names,
                    extra={"train": result.summary, "ray_run": result.run_path,
                           "mlflow_run_id": (result.mlflow_run or {}).get("run_id")})
    MLFLOW_RUN_PATH.write_text(json.dumps(result.mlflow_run, indent=2) + "\n")
    headline = {key: result.summary[key] for key in HEADLINE if key in result.summary}
    (REPORTS_DIR / "train_metrics.json").write_text(json.dumps(headline, indent=2) + "\n")
    s = result.summary
    _say(f"done: {s['epochs']} epochs, loss {s.get('loss', float('nan')):.3f}, {s['images_per_s']:.1f} img/s, "
         f"{s['wall_time_s']:.0f}s; model -> {MODEL_PATH}, MLflow run {result.mlflow_run['run_id']}"
         + (f" (model {result.model_uri})" if result.model_uri else ""))
    return 0


def _say(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)

"""``python -m pipeline train``: the DVC ``train`` stage.

Reads ``model``, ``train``, ``ray``, ``mlflow`` and ``data.resize`` from the params, trains with
Ray Train (:func:`pipeline.driver.fit`) and writes:

- ``models/model.pt``: a ``detector`` checkpoint with the class names,
- ``models/mlflow_run.json``: ``{"run_id", "tracking_uri", "experiment_id"}`` so evaluation
  logs into the same MLflow run,
- ``reports/train.json`` (the summary), ``reports/train_metrics.json`` (the DVC metric: ``images_per_s``
  and ``train_time_s``), ``reports/train_curve.csv`` (DVC plot), ``reports/loss_curve.png``, ``reports/bad_images.json`` (the
  training images that could not be decoded and were skipped),
- ``dvclive/``: DVCLive's live metrics and plots, rewritten after every epoch while training runs
  (:mod:`pipeline.tracking.live`: ``dvc exp show`` shows a running experiment's progress).

The run is named from everything the model depends on (params, data, code, torch/torchvision;
:mod:`pipeline.driver.identity`): rerunning with identical inputs resumes an interrupted run,
or reuses a finished one (nothing trained, no new model version); any change trains afresh. A
reused run whose MLflow run the current tracking store lacks is recorded there first, and
``models/mlflow_run.json`` names that new run.
Under ``dvc exp run --temp/--queue`` the default ``ray_results/``, ``mlflow.db`` and ``mlruns/``
are in the DVC repository (``DVC_ROOT``), not in the temporary copy DVC deletes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from pipeline.params import Params

logger = logging.getLogger(__name__)

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
                        help="Ray run name (default: train-<hash of the params, data and code>); "
                             "an existing run of that name is resumed (or reused, if finished)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new run even if an interrupted or finished one with these inputs exists")


def run(params: Params, args: argparse.Namespace) -> int:
    import ray

    from pipeline import driver
    from pipeline.data.errors import DataError
    from pipeline.driver.identity import result_params, run_identity
    from pipeline.driver.storage import state_root
    from pipeline.tracking.live import LIVE_DIR, DvcLiveMetrics
    from pipeline.training.losses import NonFiniteLossError

    root = state_root()
    data_dir = Path(getattr(args, "data_dir", "data/prepared"))
    identity = run_identity(result_params(params), data_dir)
    run_name = getattr(args, "run_name", None) or f"train-{identity.digest()}"
    if getattr(args, "fresh", False):
        run_name += time.strftime("-%Y%m%d-%H%M%S")
    storage_path = driver.resolve_storage_path(params.ray.storage_path, root)
    tags = {"dvc_stage": os.environ.get("DVC_STAGE", "train" if os.environ.get("DVC_ROOT") else "none")}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    artifacts = [Path(params.source_path or "params.yaml"), *map(Path, ARTIFACTS)]

    workers = params.ray.num_workers
    workers = f"{workers[0]}..{workers[1]}" if isinstance(workers, list) else workers
    logger.info("run %s: %s worker(s), storage %s", run_name, workers, storage_path)
    live = DvcLiveMetrics(LIVE_DIR, epochs=params.train.epochs)  # absolute: the sink runs in Ray's controller
    ray_was_running = ray.is_initialized()
    try:
        tracking = driver.Tracking(tags=tags, artifacts=artifacts, sinks=[live], reports_dir=REPORTS_DIR)
        result = driver.fit(params, run_name=run_name, storage_path=storage_path, data_dir=data_dir, root=root,
                            tracking=tracking, identity=identity)
    except (driver.PreflightError, driver.TrainingError, NonFiniteLossError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if not ray_was_running and ray.is_initialized():
            ray.shutdown()

    from detector import save_checkpoint

    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(MODEL_PATH, result.model, class_names=result.class_names,
                    extra={"train": result.summary, "ray_run": result.run_path,
                           "mlflow_run_id": (result.mlflow_run or {}).get("run_id")})
    MLFLOW_RUN_PATH.write_text(json.dumps(result.mlflow_run, indent=2) + "\n")
    headline = {key: result.summary[key] for key in HEADLINE if key in result.summary}
    (REPORTS_DIR / "train_metrics.json").write_text(json.dumps(headline, indent=2) + "\n")
    if not live.is_current(result.history):  # a reused run trained nothing (or the live sink failed)
        live.write(result.history)
    s = result.summary
    if result.reused:
        logger.info("model of the finished run %s -> %s, MLflow run %s", result.run_name, MODEL_PATH,
                    (result.mlflow_run or {}).get("run_id"))
        return 0
    logger.info("done: %s epochs, loss %.3f, %.1f img/s, %.0fs; model -> %s, MLflow run %s%s", s["epochs"],
                s.get("loss", float("nan")), s["images_per_s"], s["wall_time_s"], MODEL_PATH,
                result.mlflow_run["run_id"], f" (model {result.model_uri})" if result.model_uri else "")
    return 0

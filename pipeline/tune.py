"""``python -m pipeline tune``: a Ray Tune sweep over anchors, IoU thresholds (and lr): grid,
random or Optuna (TPE) search, ASHA early stopping.

Reads the ``tune`` section (the search space, ASHA, trial resources) plus what training
reads. Not part of the default ``dvc repro``: its DVC stage lives in ``sweeps/dvc.yaml``
(``dvc repro sweeps/dvc.yaml:tune``). Writes into ``reports/tune/``:

- ``trials.csv``: one row per trial (status, last AP50/AP, anchor fit, swept values),
- ``best_params.yaml``: the winner's ``model`` section (and other swept keys) in the shape
  of ``params.yaml``; ``--apply`` writes its swept keys into ``params.yaml``,
- ``ap_vs_params.png``: AP against each swept key,
- ``held_out.json`` (with ``tune.held_out: true``): the winner and the defaults retrained and scored
  on the held-out test split (:mod:`pipeline.tuning.held_out`), also printed and logged to the
  sweep's MLflow run.

Rerunning the same command resumes an interrupted sweep; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.params import Params, ParamsError

logger = logging.getLogger(__name__)

OUT_DIR = Path("reports/tune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="data/prepared",
                        help="prepared data with train.json/val.json (default: data/prepared)")
    parser.add_argument("--out-dir", default=str(OUT_DIR), help=f"where the results go (default: {OUT_DIR})")
    parser.add_argument("--fresh", action="store_true",
                        help="discard an interrupted sweep with the same config and start over")
    parser.add_argument("--check", action="store_true",
                        help="validate the search space, print the trial count and the experiment path, and exit")
    parser.add_argument("--apply", action="store_true",
                        help="no sweep: write the swept keys of <out-dir>/best_params.yaml into the params file")


def run(params: Params, args: argparse.Namespace) -> int:
    out_dir = Path(getattr(args, "out_dir", OUT_DIR))
    data_dir = Path(getattr(args, "data_dir", "data/prepared"))
    try:
        if getattr(args, "apply", False):
            return _apply(params, out_dir)
        from pipeline.tuning.space import num_trials, validate_space

        dims = validate_space(params)  # with search: optuna, also builds Optuna's distributions
        if getattr(args, "check", False):
            from pipeline.tuning.sweep import experiment_name

            how = params.tune.search
            if how == "optuna":
                from pipeline.tuning.searchers import startup_trials
                from pipeline.tuning.space import optuna_space

                kinds = ", ".join(f"{key} {type(d).__name__.replace('Distribution', '').lower()}"
                                  for key, d in optuna_space(dims).items())
                how = f"optuna TPE after {startup_trials(params.tune)} random trial(s): {kinds}"
            print(f"tune.space OK: {len(dims)} key(s), {num_trials(params, dims)} trial(s) ({how}); "
                  f"experiment {experiment_name(params, data_dir)}")
            return 0
        from pipeline.driver import PreflightError, TrainingError
        from pipeline.tuning.held_out import TEST_SPLIT
        from pipeline.tuning.sweep import run_sweep

        if params.tune.held_out and not (data_dir / TEST_SPLIT).is_file():  # before any trial trains
            print(f"error: tune.held_out: {data_dir / TEST_SPLIT} not found: prepare a held-out test split "
                  "(data.test_fraction > 0 or data.coco.test_annotations), or set tune.held_out: false",
                  file=sys.stderr)
            return 2

        try:
            outcome = run_sweep(params, data_dir=data_dir, out_dir=out_dir, fresh=getattr(args, "fresh", False))
        except (PreflightError, TrainingError, FileNotFoundError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not outcome.complete:
        return 130
    if outcome.best is None:
        print("error: no trial reported a result; see the trials in MLflow and " + outcome.experiment_path,
              file=sys.stderr)
        return 1
    if params.tune.held_out:
        try:
            outcome.outputs["held_out"] = _held_out(params, outcome, data_dir, out_dir)
        except (TrainingError, FileNotFoundError) as err:
            print(f"error: held-out check: {err}", file=sys.stderr)
            return 1
    for name, path in outcome.outputs.items():
        logger.info("%s: %s", name, path)
    return 0


def _held_out(params: Params, outcome: Any, data_dir: Path, out_dir: Path) -> Path:
    """Train the defaults and the winner, score both on the test split, print, write and log the comparison."""
    import json

    from pipeline.driver import storage
    from pipeline.tracking.uri import resolve_tracking_uri
    from pipeline.tuning.held_out import HELD_OUT_JSON, compare_on_test, table
    from pipeline.tuning.space import parse_space

    root = storage.state_root()
    keys = [dim.key for dim in parse_space(params.tune.space)]
    comparison = compare_on_test(params, data_dir.resolve(), outcome.outputs["best_params"], keys,
                                 storage_path=storage.join(outcome.experiment_path, "held_out"), root=root,
                                 parent_run_id=outcome.mlflow_run_id, run_prefix=f"{outcome.sweep_id}-held-out")
    print(table(comparison, params.tune.metric))
    path = out_dir / HELD_OUT_JSON
    path.write_text(json.dumps(comparison, indent=2) + "\n")
    if outcome.mlflow_run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(resolve_tracking_uri(params.mlflow.tracking_uri, root))
        for name, row in comparison["rows"].items():
            for split in ("val", "test"):
                for metric, value in row[split].items():
                    client.log_metric(outcome.mlflow_run_id, f"held_out/{name}_{split}_{metric}", value)
        for metric, value in comparison["test_gain"].items():
            client.log_metric(outcome.mlflow_run_id, f"held_out/test_gain_{metric}", value)
        client.log_artifact(outcome.mlflow_run_id, str(path))
    return path


def _apply(params: Params, out_dir: Path) -> int:
    from pipeline.tuning.results import apply_best_params
    from pipeline.tuning.space import parse_space

    best = out_dir / "best_params.yaml"
    if not best.is_file():
        print(f"error: {best} not found: run the sweep first (`dvc repro sweeps/dvc.yaml:tune`)", file=sys.stderr)
        return 1
    target = Path(params.source_path or "params.yaml")
    keys = [dim.key for dim in parse_space(params.tune.space)]
    changes = apply_best_params(best, target, keys)
    logger.info("wrote the best trial's %s into %s; train it with `dvc repro` (or `dvc exp run`)",
                ", ".join(changes), target)
    return 0

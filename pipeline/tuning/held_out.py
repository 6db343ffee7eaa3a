"""Does the sweep pay? Its winner and the defaults, retrained and scored on a split the sweep never saw.

Trials are ranked on the val split, so the winner's val score is biased upwards (it was picked for
it). With ``tune.held_out: true`` the ``tune`` stage then trains two more runs through the training
driver, each for ``tune.epochs`` epochs like a trial (no early stopping, no validation during
training): the **defaults** (the params as they are, the swept keys at their configured values) and
the **winner** (the swept keys at the best trial's values, ``best_params.yaml``). Both are scored on
val and on the held-out test split (``<data_dir>/test.json``, written by ``prepare`` from
``data.test_fraction`` or ``data.coco.test_annotations``), which no trial read. The two runs are MLflow
child runs of the sweep's parent run; the comparison is printed and written to ``held_out.json``.
``benchmarks/bench_sweep.py`` runs the same comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.params import Params, params_from_dict, set_dotted

__all__ = ["HELD_OUT_JSON", "TEST_SPLIT", "compare_on_test", "score_split", "table", "winner_params"]

HELD_OUT_JSON = "held_out.json"
TEST_SPLIT = "test.json"
SCORES = ("AP", "AP50", "AP75")


def winner_params(params: Params, best_yaml: Path, keys: list[str]) -> Params:
    """``params`` with the swept ``keys`` set to their values in the sweep's ``best_params.yaml``."""
    best = yaml.safe_load(Path(best_yaml).read_text())
    raw = params.to_dict()
    for key in keys:
        value: Any = best
        for part in key.split("."):
            value = value[part]
        set_dotted(raw, key, value)
    out = params_from_dict(raw)
    out.source_path = params.source_path
    return out


def _as_trial(params: Params) -> Params:
    """``params`` trained as a trial is: ``tune.epochs`` epochs, no validation during training, no
    model registered (these runs are measurements, not models to serve)."""
    raw = params.to_dict()
    set_dotted(raw, "train.epochs", params.tune.epochs)
    set_dotted(raw, "train.val_every", 0)
    set_dotted(raw, "mlflow.registered_model_name", None)
    out = params_from_dict(raw)
    out.source_path = params.source_path
    return out


def score_split(model: Any, json_path: Path, params: Params) -> dict[str, float]:
    """COCO ``AP``, ``AP50``, ``AP75`` of ``model`` on the split at ``json_path`` (evaluation transforms,
    the params' bad-image rule), in this process."""
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.evaluation import evaluate_model

    resize, data = params.data.resize, params.data
    dataset = CocoDetectionDataset(json_path, transforms=build_transforms(False, resize.min_size, resize.max_size),
                                   exif_orientation=data.exif_orientation,
                                   on_bad_image="skip" if data.bad_images == "skip" else "fail")
    metrics = evaluate_model(model, dataset, batch_size=params.evaluate.batch_size, score_threshold=0.0)
    return {k: round(float(metrics[k]), 4) for k in SCORES}


def compare_on_test(params: Params, data_dir: str | Path, best_yaml: str | Path, keys: list[str], *,
                    storage_path: str, root: str | Path, parent_run_id: str | None = None,
                    run_prefix: str = "held-out") -> dict[str, Any]:
    """Train the defaults and the winner (see the module docstring) and score both on val and test.

    Returns ``{"winner_params": {key: value}, "epochs", "rows": {"defaults"|"winner": {"val": {AP, AP50,
    AP75}, "test": {...}, "run_name"}}, "test_gain": {AP, AP50, AP75: winner - defaults, in points}}``.

    Raises:
        FileNotFoundError: ``<data_dir>/test.json`` does not exist.
    """
    from pipeline.driver import Tracking, fit

    data_dir = Path(data_dir)
    test = data_dir / TEST_SPLIT
    if not test.is_file():
        raise FileNotFoundError(f"{test} not found: tune.held_out needs a held-out test split (prepare with "
                                "data.test_fraction > 0 or data.coco.test_annotations)")
    winner = winner_params(params, Path(best_yaml), keys)
    rows: dict[str, dict[str, Any]] = {}
    for name, run_params in (("defaults", params), ("winner", winner)):
        run_params = _as_trial(run_params)
        run_name = f"{run_prefix}-{name}"
        result = fit(run_params, run_name=run_name, storage_path=storage_path, data_dir=data_dir, root=root,
                     tracking=Tracking(parent_run_id=parent_run_id, tags={"detpipe.held_out": name}), check=None)
        rows[name] = {"run_name": run_name, "val": score_split(result.model, data_dir / "val.json", run_params),
                      "test": score_split(result.model, test, run_params)}
    gain = {k: round(100 * (rows["winner"]["test"][k] - rows["defaults"]["test"][k]), 2) for k in SCORES}
    values = {key: _get(winner.to_dict(), key) for key in keys}
    return {"winner_params": values, "epochs": params.tune.epochs, "rows": rows, "test_gain": gain}


def table(comparison: dict[str, Any], metric: str) -> str:
    """The comparison as console lines: one row per run, val and test, and the winner's gain on test."""
    lines = [f"held-out check: the defaults and the sweep's winner (selected on val {metric}), each trained "
             f"{comparison['epochs']} epochs; the test split was never seen by the sweep",
             f"{'':10} {'val AP':>8} {'val AP50':>9} {'test AP':>8} {'test AP50':>10}"]
    for name, row in comparison["rows"].items():
        lines.append(f"{name:10} {row['val']['AP']:>8.3f} {row['val']['AP50']:>9.3f} {row['test']['AP']:>8.3f} "
                     f"{row['test']['AP50']:>10.3f}")
    gain = comparison["test_gain"]
    lines.append(f"winner - defaults on test: {gain['AP']:+.1f} AP, {gain['AP50']:+.1f} AP50 points; "
                 f"winner: {comparison['winner_params']}")
    return "\n".join(lines)


def _get(raw: dict[str, Any], key: str) -> Any:
    value: Any = raw
    for part in key.split("."):
        value = value[part]
    return value

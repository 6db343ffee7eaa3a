"""Does the sweep pay? A sweep that selects on val, then its winner and the defaults scored on a held-out test split.

    python benchmarks/bench_sweep.py DATA_DIR --preset sweeps/presets/photo_set.yaml [--params params.yaml]
        [--set KEY=VALUE ...] [--trials N] [--epochs N] [--out FILE]

DATA_DIR is a prepared folder with ``train.json``, ``val.json`` and ``test.json`` (``data.test_fraction``
or ``data.coco.test_annotations``; the photo set's builder writes one). The preset (a YAML of params
sections) is merged over the params file, then ``--set`` overrides; ``--trials`` / ``--epochs`` set
``tune.num_samples`` / ``tune.epochs``.

1. The sweep: ``pipeline.tuning.sweep.run_sweep`` (what ``python -m pipeline tune`` runs), trials ranked
   by ``tune.metric`` on val with ASHA; it never reads ``test.json``.
2. The winner (its swept values applied to the params) and the defaults (the params as they are) are each
   trained once more for ``tune.epochs`` epochs and scored on val and on test:
   ``pipeline.tuning.held_out.compare_on_test``, what ``tune.held_out: true`` runs after a sweep.
3. Prints both rows, the winner's params and the test AP difference; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay``'s sections merged in, key by key (a ``tune.space`` is replaced whole)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "space":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_with_preset(params_path: str | Path, preset: str | Path, overrides: list[str]) -> Any:
    """The validated params of ``params_path`` with ``preset`` merged over it and ``overrides`` applied."""
    from pipeline.params import ParamsError, apply_overrides, params_from_dict

    overlay = yaml.safe_load(Path(preset).read_text()) or {}
    if not isinstance(overlay, dict):
        raise ParamsError(f"{preset}: a preset is a mapping of params sections")
    raw = merge(yaml.safe_load(Path(params_path).read_text()) or {}, overlay)
    try:
        params = params_from_dict(apply_overrides(raw, overrides))
    except ParamsError as err:
        raise ParamsError(f"{preset} over {params_path}: {err}") from err
    params.source_path = str(preset)
    params.detector_config(num_classes=1)
    return params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--preset", type=Path, required=True)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trials", type=int, default=None, help="tune.num_samples")
    parser.add_argument("--epochs", type=int, default=None, help="tune.epochs (and the final runs' epochs)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    from pipeline.params import ParamsError
    from pipeline.tuning.held_out import compare_on_test, table
    from pipeline.tuning.space import parse_space, validate_space
    from pipeline.tuning.sweep import run_sweep

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    extra = [f"tune.num_samples={args.trials}"] * (args.trials is not None)
    extra += [f"tune.epochs={args.epochs}"] * (args.epochs is not None)
    extra += [f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}", "mlflow.log_model=false",
              "mlflow.registered_model_name=null", "mlflow.experiment_name=bench-sweep", f"ray.storage_path={work / 'ray'}"]
    try:
        params = load_with_preset(args.params, args.preset, [*args.overrides, *extra])
        validate_space(params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    data_dir = args.data_dir.resolve()
    if not (data_dir / "test.json").is_file():
        print(f"error: {data_dir / 'test.json'} not found: prepare with data.test_fraction > 0 or "
              f"data.coco.test_annotations (benchmarks/photo_set.py writes a test split)", file=sys.stderr)
        return 2
    outcome = run_sweep(params, data_dir=data_dir, out_dir=work / "tune", root=work, fresh=True)
    if outcome.best is None:
        print("error: no trial reported a result", file=sys.stderr)
        return 1
    keys = [dim.key for dim in parse_space(params.tune.space)]
    # what `tune.held_out: true` runs after a sweep: the defaults and the winner retrained, scored on val and test
    comparison = compare_on_test(params, data_dir, work / "tune" / "best_params.yaml", keys,
                                 storage_path=str(work / "ray"), root=work, parent_run_id=outcome.mlflow_run_id)
    print(f"\nsweep: {params.tune.num_samples} trials ({params.tune.search}), {params.tune.epochs} epochs each")
    print(table(comparison, params.tune.metric))
    if args.out:
        args.out.write_text(json.dumps(comparison, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

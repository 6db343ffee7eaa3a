"""Command line: ``python -m pipeline STAGE [--params params.yaml] [--set key.path=value ...]``.

Each stage lives in its own module (``pipeline/<stage>.py``) exposing
``add_arguments(parser)`` (optional, for stage-specific flags) and ``run(params, args) -> int``.
Params are loaded and validated here, once, before the stage does any work.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pipeline.console import setup_console
from pipeline.environ import choose_local_ray_auth_mode
from pipeline.params import ParamsError, load_params

STAGES = {
    "prepare": "Prepare the dataset (synthetic, COCO or VOC) into data/prepared/ and write data reports.",
    "train": "Train the detector with Ray Train (DDP) and track the run in MLflow.",
    "evaluate": "COCO metrics, PR curves and pictures for the trained model on the val split.",
    "predict": "Run a trained model on arbitrary images and write detections + overlays.",
    "tune": "Ray Tune sweep over anchor scales, aspect ratios and IoU thresholds.",
    "anchors": "Fit model.anchors (scales per FPN level, aspect ratios) to data/prepared/: reports/anchors.yaml.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Faster R-CNN experiment pipeline (Ray Train, Ray Tune, MLflow, DVC).",
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, help_text in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        stage_parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        stage_parser.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
            help="override one params key for this run, value parsed as YAML "
                 "(e.g. --set model.anchors.aspect_ratios=[0.25,1,4]); repeatable",
        )
        module = _stage_module(name, required=False)
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(stage_parser)
    return parser


def _stage_module(name: str, required: bool = True):
    try:
        return importlib.import_module(f"pipeline.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"pipeline.{name}" or required:
            raise
        return None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # MLflow announces creating/migrating a new sqlite store ("Creating initial MLflow database
    # tables...") at INFO: internals, not about the run. Its warnings still show.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    setup_console()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    choose_local_ray_auth_mode(params.ray.address)
    module = _stage_module(args.stage)
    return int(module.run(params, args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

"""Driver side of a training run: what runs in the process that starts it (layer 2 of 3).

- ``runner.fit``: one training run with Ray Train (DDP) around the worker side
  (:mod:`pipeline.training`), tracked on the driver's side (:mod:`pipeline.tracking`);
  ``record``: what a run folder says about its run (status, identity, final checkpoint);
- ``identity``: what a result depends on (params, data, the code the workers import,
  torch/torchvision), from which runs are named and reused;
- ``preflight``: checks that fail fast before anything trains; ``cluster``: connecting to Ray and
  shipping the code; ``storage``: the run folders on local disk or ``s3://``.

The ``train`` stage (``pipeline/train.py``) and the Tune sweep (layer 3, :mod:`pipeline.tuning`)
call :func:`fit`.
"""

from typing import TYPE_CHECKING, Any

from pipeline.driver.cluster import ensure_ray
from pipeline.driver.preflight import PreflightError, preflight
from pipeline.driver.storage import resolve_storage_path

if TYPE_CHECKING:
    from pipeline.driver.runner import (
        Tracking,
        TrainingError,
        TrainResult,
        build_torch_trainer,
        default_run_name,
        fit,
    )
    from pipeline.training.losses import NonFiniteLossError

__all__ = ["NonFiniteLossError", "PreflightError", "Tracking", "TrainResult", "TrainingError", "build_torch_trainer",
           "default_run_name", "ensure_ray", "fit", "preflight", "resolve_storage_path"]


def __getattr__(name: str) -> Any:
    """The training side's names are exported lazily (PEP 562): connecting to Ray
    (:func:`ensure_ray`, which ``predict`` and ``evaluate`` use) does not import torch (~0.7 GB of
    RSS) through this package. The imports are statements so that the run identity's import graph
    sees them."""
    if name in ("Tracking", "TrainingError", "TrainResult", "build_torch_trainer", "default_run_name", "fit"):
        from pipeline.driver import runner as found
    elif name == "NonFiniteLossError":
        from pipeline.training import losses as found
    else:
        raise AttributeError(f"module 'pipeline.driver' has no attribute {name!r}")
    value = getattr(found, name)
    globals()[name] = value
    return value

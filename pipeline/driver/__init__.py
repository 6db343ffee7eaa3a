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

from pipeline.driver.cluster import ensure_ray
from pipeline.driver.preflight import PreflightError, preflight
from pipeline.driver.runner import (
           Tracking,
           TrainingError,
           TrainResult,
           build_torch_trainer,
           default_run_name,
           fit,
)
from pipeline.driver.storage import resolve_storage_path
from pipeline.training.losses import NonFiniteLossError

__all__ = ["NonFiniteLossError", "PreflightError", "Tracking", "TrainResult", "TrainingError", "build_torch_trainer",
           "default_run_name", "ensure_ray", "fit", "preflight", "resolve_storage_path"]

"""Distributed training with Ray Train (DDP) tracked in MLflow, in three layers.

- ``loop.train_loop_per_worker``: what every DDP rank runs (data shard, optimiser, checkpoints).
- ``driver.fit``: run identity (``identity``), preflight checks (``preflight``), the
  ``TorchTrainer`` with the project shipped to the nodes (``cluster``), driver-side tracking of
  the workers' reports (``progress``, ``tracking``), the final model.
- ``pipeline/train.py`` (the ``train`` stage) and the Tune sweep call ``fit``.
"""

from pipeline.training.driver import PreflightError, TrainingError, TrainResult, default_run_name, fit
from pipeline.training.loop import NonFiniteLossError

__all__ = ["NonFiniteLossError", "PreflightError", "TrainResult", "TrainingError", "default_run_name", "fit"]

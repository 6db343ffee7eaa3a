"""Tracking: what a run leaves for people to read, written from the driver's side only.

- ``progress``: the workers' epoch reports as the driver sees them, handed to sinks;
- ``mlflow_runs``: the MLflow run of a training (tracking URI, start, final model, failure);
  ``trials``: a sweep's parent and child runs; ``evaluation``: evaluation results logged into
  the training's run;
- ``live``: DVCLive's live metrics for ``dvc exp show``; ``system_metrics``: every node's
  CPU/memory/GPU samples; ``reports``: the training's CSV/PNG/JSON reports.

Nothing here changes a trained model, so none of it is part of a run's identity
(:mod:`pipeline.driver.identity`).
"""

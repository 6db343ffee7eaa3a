"""Tracking: what a run leaves for people to read, written from the driver's side only.

- ``progress``: the workers' epoch reports and live progress as the driver sees them, relayed to
  sinks; ``channel``: the actor that carries rows and samples from the workers during the epoch;
- ``mlflow_runs``: the MLflow run of a training (tracking URI, start, final model, failure);
  ``trials``: a sweep's parent and child runs; ``evaluation``: evaluation results logged into
  the training's run;
- ``live``: DVCLive's live metrics for ``dvc exp show`` and ``dvc plots``; ``system_metrics``: every node's
  CPU/memory/GPU samples; ``reports``: the training's CSV/PNG/JSON reports.

Nothing here changes a trained model, so none of it is part of a run's identity
(:mod:`pipeline.driver.identity`).
"""

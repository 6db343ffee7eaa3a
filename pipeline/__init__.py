"""The experiment pipeline: data prep, Ray training, evaluation, prediction and Tune sweeps.

Run a stage with ``python -m pipeline STAGE [--params params.yaml] [--set key.path=value ...]``.
"""

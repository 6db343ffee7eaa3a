"""The servable MLflow model: a pyfunc wrapper around the project's own checkpoint, and the registry.

- :mod:`pipeline.serving.model`: ``DetectorModel``, the ``mlflow.pyfunc.PythonModel`` (request
  format: a DataFrame with an ``image`` column of encoded image bytes; one row of detections per image),
- :mod:`pipeline.serving.model_code`: the models-from-code file MLflow logs (no pickled objects),
- :mod:`pipeline.serving.export`: logging that model into a training's MLflow run, with its signature,
  input example and requirements, the weights as a ``weights_only``-safe ``detector`` checkpoint,
- :mod:`pipeline.serving.registry`: registering a version, its tags and the alias,
- :mod:`pipeline.serving.requirements`: the model's pip requirements, derived from what its code imports.
"""

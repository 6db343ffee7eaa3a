"""The models-from-code file MLflow logs with the model (``python_model=<this file>``).

MLflow runs it when the model is loaded: nothing is unpickled, and the weights come from the
checkpoint artifact (see :class:`pipeline.serving.model.DetectorModel`).
"""

from mlflow.models import set_model

from pipeline.serving.model import DetectorModel

set_model(DetectorModel())

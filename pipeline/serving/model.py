"""``DetectorModel``: the detector as an ``mlflow.pyfunc.PythonModel`` that MLflow can serve.

Request (what ``mlflow models serve`` and ``mlflow.pyfunc.load_model(...).predict`` take): a
DataFrame with one row per image and a binary column ``image`` holding the encoded file (JPEG,
PNG, any format PIL reads). Over HTTP the bytes are base64 strings, which MLflow decodes because
the signature declares the column ``binary``::

    POST /invocations
    {"dataframe_split": {"columns": ["image"], "data": [["<base64 of photo.jpg>"]]},
     "params": {"score_threshold": 0.5}}

Response: one row per image, ``boxes`` ``[[x1, y1, x2, y2], ...]`` in the original image's pixels,
``scores``, ``labels`` (1..C), ``class_names``, and the image's ``width`` and ``height``. Images are
resized as in training (``min_size``/``max_size`` of the :class:`ServingConfig`, the
model's ``model_config``) before the detector runs.

The weights are a ``detector`` checkpoint (``detector.load_checkpoint``, ``weights_only=True``): loading
the model executes no pickled code.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import mlflow.pyfunc
import pandas as pd

from pipeline.serving.config import CHECKPOINT_ARTIFACT, ServingConfig

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("boxes", "scores", "labels", "class_names", "width", "height")


class DetectorModel(mlflow.pyfunc.PythonModel):
    """Encoded images in, per-image detections (original pixels) out; see the module docstring."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import detector
        from pipeline.data.transforms import build_transforms
        from pipeline.inference.loading import class_names_of, resolve_device

        self.config = ServingConfig.from_mapping(context.model_config)
        self.device = resolve_device(self.config.device)
        self.model = detector.load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], map_location=self.device)
        self.class_names = class_names_of(self.model)
        self.transforms = build_transforms(False, self.config.min_size, self.config.max_size)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        from pipeline.inference.detection import detect

        threshold = float((params or {}).get("score_threshold", self.config.score_threshold))
        if not 0.0 <= threshold <= 1.0:
            raise _bad_request(f"params.score_threshold: {threshold} must be in [0, 1]")
        images = decode_images(model_input)
        rows = []
        for start in range(0, len(images), self.config.batch_size):
            batch = images[start:start + self.config.batch_size]
            for image, output in zip(batch, detect(self.model, batch, transforms=self.transforms,
                                                   device=self.device)):
                rows.append(self._row(image, output, threshold))
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))

    def _row(self, image: Any, output: Mapping[str, Any], threshold: float) -> dict[str, Any]:
        keep = output["scores"] >= threshold
        labels = output["labels"][keep].tolist()
        return {"boxes": [[round(v, 2) for v in box] for box in output["boxes"][keep].tolist()],
                "scores": [round(v, 5) for v in output["scores"][keep].tolist()],
                "labels": labels, "class_names": [self.class_names.get(label, str(label)) for label in labels],
                "width": image.width, "height": image.height}


def decode_images(model_input: Any) -> list[Any]:
    """The decoded RGB PIL images of a request (:func:`pipeline.data.decode.decode_image`, EXIF orientation
    applied): ``model_input[IMAGE_COLUMN]`` holds bytes or base64 text.

    Raises an ``MlflowException`` (HTTP 400 when served) naming the row that is not an image.
    """
    from PIL import UnidentifiedImageError

    from pipeline.data.decode import READ_ERRORS, decode_image

    if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
        raise _bad_request(f"expected a DataFrame with a column {IMAGE_COLUMN!r} of encoded images "
                           f"(got {type(model_input).__name__})")
    images = []
    for row, value in enumerate(model_input[IMAGE_COLUMN]):
        try:
            data = value if isinstance(value, bytes | bytearray) else base64.b64decode(value)
            images.append(decode_image(data))  # EXIF orientation applied: boxes in the frame the user sees
        except (*READ_ERRORS, TypeError, binascii.Error) as err:
            reason = "not a format PIL can read" if isinstance(err, UnidentifiedImageError) else f"{err}"
            raise _bad_request(f"row {row} of column {IMAGE_COLUMN!r} is not an encoded image ({reason}); "
                               "send the bytes of a JPEG/PNG file (base64 in JSON)") from err
    return images


def _bad_request(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)

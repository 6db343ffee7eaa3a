"""``ServingConfig``: how the served model preprocesses and batches (its MLflow ``model_config``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc artifact that holds the weights (a detector checkpoint)


@dataclass(frozen=True)
class ServingConfig:
    """Logged as the pyfunc model's ``model_config``; override any field when loading, e.g.
    ``mlflow.pyfunc.load_model(uri, model_config={"device": "cuda", "batch_size": 16})``.

    ``min_size``/``max_size`` must be the training resize (``data.resize``): the detector
    was trained on images of that scale.
    """

    min_size: int = 800                 # shorter side resized to min_size ...
    max_size: int = 1333                # ... unless the longer side would exceed max_size
    score_threshold: float = 0.0        # default of the `score_threshold` request param (0: every detection
                                        # the model keeps after its own model.roi score threshold)
    batch_size: int = 8                 # images per forward pass
    device: str = "auto"                # cpu | cuda | auto (cuda when available)

    def __post_init__(self) -> None:
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(f"ServingConfig: need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")
        if not 0.0 <= self.score_threshold <= 1.0 or self.batch_size <= 0:
            raise ValueError(f"ServingConfig: score_threshold {self.score_threshold} must be in [0, 1] and "
                             f"batch_size {self.batch_size} > 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ServingConfig:
        """From a ``model_config`` dict; unknown keys are an error naming them."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"model_config: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

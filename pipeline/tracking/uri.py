"""Which MLflow tracking store a stage uses."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_tracking_uri"]


def resolve_tracking_uri(configured: str | None, root: str | Path = ".") -> str:
    """``mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``.

    ``root`` is the state root (:func:`pipeline.driver.storage.state_root`: the DVC repository
    under ``dvc exp run --temp/--queue``, not its temporary copy).
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"

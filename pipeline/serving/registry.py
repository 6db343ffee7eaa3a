"""Model registry: one version per training that ran, tagged, with an alias that follows it."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DESCRIPTION", "ModelVersionRef", "register_version", "version_tags"]

DESCRIPTION = """Faster R-CNN (FPN) object detector, an MLflow pyfunc model (`mlflow models serve`, `mlflow.pyfunc.load_model`).

**Request** (`POST /invocations`): a DataFrame with one row per image and a binary column `image` holding the
encoded file (JPEG, PNG; base64 strings in JSON), e.g.
`{"dataframe_split": {"columns": ["image"], "data": [["BASE64"]]}, "params": {"score_threshold": 0.5}}`.

**Response**: per image `boxes` (`[x1, y1, x2, y2]` in the original image's pixels), `scores`, `labels`,
`class_names`, `width`, `height`.

**Versions**: one per training that ran, tagged `git_commit`, `dvc_exp_name` (under `dvc exp run`), `params_hash`
and `val_AP`/`val_AP50`/`val_AP75`; the alias (`mlflow.registered_model_alias`, default `latest-train`) is on the
newest.
"""


class ModelVersionRef(dict):
    """``{"name", "version", "alias", "uri"}`` of a registered version (``uri``: ``models:/NAME/VERSION``)."""


def register_version(tracking_uri: str, *, name: str, model_uri: str, model_id: str | None, run_id: str,
                     alias: str | None, tags: Mapping[str, str]) -> ModelVersionRef:
    """Create a version of ``name`` from ``model_uri``, tag it, and move ``alias`` to it.

    The registered model is created on first use, with :data:`DESCRIPTION` (also given to an
    existing one that has no description).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name, description=DESCRIPTION)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, description=DESCRIPTION)
    version = client.create_model_version(name, source=model_uri, run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()}, model_id=model_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return ModelVersionRef(name=name, version=version.version, alias=alias, uri=f"models:/{name}/{version.version}")


# run tags copied onto the version: which commit, which DVC experiment, which params and data
RUN_TAGS_ON_VERSION = ("git_commit", "dvc_exp_name", "params_hash", "ray_run_name")
VAL_METRICS_ON_VERSION = ("AP", "AP50", "AP75")


def version_tags(run_tags: Mapping[str, str], metrics: Mapping[str, object] | None) -> dict[str, str]:
    """The tags of a new version: :data:`RUN_TAGS_ON_VERSION` of the training run (those present)
    and its last validation metrics as ``val_AP``, ``val_AP50``, ``val_AP75`` (those present)."""
    tags = {key: str(run_tags[key]) for key in RUN_TAGS_ON_VERSION if run_tags.get(key)}
    for key in VAL_METRICS_ON_VERSION:
        value = (metrics or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            tags[f"val_{key}"] = f"{value:.4f}"
    return tags

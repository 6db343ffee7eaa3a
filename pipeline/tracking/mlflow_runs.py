"""MLflow on the driver: tracking URI, the run for one training, final artifacts and model.

One MLflow run per training. The driver creates it (or finds it again when a Ray run is
resumed, through the ``detpipe.ray_run`` tag; :func:`find_run` finds a finished one in any
store, e.g. for a reused run after a switch of tracking store); the per-epoch and per-step metrics reach it
from the driver's side (:mod:`pipeline.tracking.progress`: a Ray Train callback in the Train
controller, on the driver's node), never from the workers, so a local ``sqlite:///`` store
works on a multi-node cluster. No ``mlflow.set_experiment``: it exports
``MLFLOW_EXPERIMENT_ID``, which Ray's MLflow integration would then prefer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.tracking.uri import resolve_tracking_uri

if TYPE_CHECKING:
    from pipeline.serving.config import ServingConfig

__all__ = ["REUSED_FROM_TAG", "REUSED_RUN_TAG", "REUSED_STORE_TAG", "MlflowRun", "check_reachable", "failed_on_error",
           "find_run", "flatten", "log_final", "log_history", "mark_failed", "model_uri_of", "public_uri",
           "resolve_tracking_uri", "start_run"]

logger = logging.getLogger(__name__)

RAY_RUN_TAG = "detpipe.ray_run"
# On a run that records a reused finished Ray run in a store that lacked its MLflow run: the Ray run's
# folder, and the MLflow run (id, store) it was trained into.
REUSED_FROM_TAG, REUSED_RUN_TAG, REUSED_STORE_TAG = "detpipe.reused_from", "detpipe.reused_mlflow_run", \
    "detpipe.reused_tracking_uri"


class MlflowRun(dict):
    """``{"run_id", "tracking_uri", "experiment_id"}``: what ``models/mlflow_run.json`` holds."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (``RuntimeError``) when the tracking store cannot be used.

    HTTP servers must answer ``/health``; a sqlite file's folder must be writable.
    Other schemes (databricks, ...) are left to MLflow.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
        except (OSError, RuntimeError, urllib.error.URLError) as err:
            raise RuntimeError(f"MLflow tracking server {uri} is not reachable ({err}); start it, or set "
                               f"mlflow.tracking_uri / MLFLOW_TRACKING_URI to a reachable store") from err
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".mlflow-write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise RuntimeError(f"MLflow tracking store {uri}: folder {folder} is not writable ({err})") from err


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def _experiment_id(client: Any, name: str, uri: str, root: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # local store: artifacts next to it, in <root>/mlruns
        artifact_location = (root / "mlruns").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently (e.g. by another Tune trial)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_run(*, tracking_uri: str, experiment_name: str, run_name: str, ray_run: str, root: Path,
              params: dict[str, Any], tags: dict[str, str], parent_run_id: str | None = None) -> MlflowRun:
    """Create the MLflow run for ``ray_run`` (storage/name), or reopen the one a resumed run has."""
    from mlflow.entities import Param, RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, experiment_name, tracking_uri, root)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RAY_RUN_TAG}` = '{ray_run}'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return MlflowRun(run_id=run_id, tracking_uri=tracking_uri, experiment_id=experiment_id)
    all_tags = {RAY_RUN_TAG: ray_run, **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    items = [Param(k, _param_value(v)) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=items[i:i + 100])
    return MlflowRun(run_id=run_id, tracking_uri=tracking_uri, experiment_id=experiment_id)


def find_run(tracking_uri: str, *, run_id: str | None, experiment_name: str, ray_run: str) -> MlflowRun | None:
    """The MLflow run of the finished Ray run ``ray_run`` in the store at ``tracking_uri``: ``run_id`` when
    the store holds it (not deleted), else the newest finished run tagged with ``ray_run`` in
    ``experiment_name``; None when the store has neither (another store, a deleted ``mlflow.db``)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if run_id:
        try:
            info = client.get_run(run_id).info
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            info = None
        if info is not None and info.lifecycle_stage == "active":
            return MlflowRun(run_id=run_id, tracking_uri=tracking_uri, experiment_id=info.experiment_id)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    found = client.search_runs([experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                               filter_string=f"tags.`{RAY_RUN_TAG}` = '{ray_run}' and attributes.status = 'FINISHED'")
    return MlflowRun(run_id=found[0].info.run_id, tracking_uri=tracking_uri,
                     experiment_id=experiment.experiment_id) if found else None


def model_uri_of(run: MlflowRun, registered_model_name: str | None) -> str | None:
    """The model ``run`` holds, as :func:`log_final` returns it: its newest version of
    ``registered_model_name`` (``models:/NAME/VERSION``), else its logged model (``models:/m-...``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run["tracking_uri"], registry_uri=run["tracking_uri"])
    if registered_model_name:
        versions = client.search_model_versions(f"name = '{registered_model_name}' and run_id = '{run['run_id']}'")
        if versions:
            return f"models:/{registered_model_name}/{max(int(v.version) for v in versions)}"
    logged = client.search_logged_models([run["experiment_id"]], filter_string=f"source_run_id = '{run['run_id']}'")
    return f"models:/{logged[0].model_id}" if logged else None


def log_history(run: MlflowRun, history: Sequence[Mapping[str, Any]]) -> None:
    """Log the epoch rows ``history`` into ``run`` as a training's sink logs its epoch reports
    (``epoch/<k>`` at step = epoch, :class:`pipeline.tracking.progress.MlflowMetrics`)."""
    from pipeline.tracking.progress import EpochReport, MlflowMetrics

    sink = MlflowMetrics(run["tracking_uri"], run["run_id"])
    for row in history:
        report = EpochReport.from_metrics(dict(row))
        if report is not None:
            sink.on_epoch(report)


def public_uri(uri: str) -> str:
    """``uri`` without the credentials it may hold (``https://user:token@host`` -> ``https://host``)."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def log_final(run: MlflowRun, *, model: Any, artifacts: list[Path], log_model: bool,
              registered_model_name: str | None, alias: str | None = None, serving: ServingConfig | None = None,
              val_metrics: dict[str, Any] | None = None, run_tags: dict[str, str] | None = None,
              register: bool = True, status: str = "FINISHED") -> str | None:
    """Log files and the final model into ``run`` and close it. Returns the model URI (or None).

    The model is the servable pyfunc model of :mod:`pipeline.serving` (``serving``: its
    ``ServingConfig``). With ``registered_model_name`` and ``register`` (False for a training that did
    not run, e.g. a reused finished run) a registry version is created, tagged from ``run_tags`` (this
    training's git commit, DVC experiment, ...; default: the run's tags) and ``val_metrics``, and
    ``alias`` moves to it; the URI is then ``models:/NAME/VERSION``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run["tracking_uri"])
    for path in artifacts:
        if path.is_file():
            client.log_artifact(run["run_id"], str(path))
    model_uri = None
    if log_model and model is not None:
        from pipeline.serving.config import ServingConfig
        from pipeline.serving.export import log_detector_model
        from pipeline.serving.registry import version_tags

        tags = run_tags if run_tags is not None else client.get_run(run["run_id"]).data.tags
        logged = log_detector_model(
            run, model, config=serving or ServingConfig(), registered_model_name=registered_model_name,
            alias=alias, register=register, version_tags=version_tags(tags, val_metrics))
        model_uri = logged["registered"]["uri"] if logged["registered"] else logged["model_uri"]
    client.set_terminated(run["run_id"], status=status)
    return model_uri


def mark_failed(run: MlflowRun) -> None:
    """Close ``run`` with status ``FAILED``."""
    from mlflow.tracking import MlflowClient

    MlflowClient(run["tracking_uri"]).set_terminated(run["run_id"], status="FAILED")


@contextlib.contextmanager
def failed_on_error(run: MlflowRun | None) -> Iterator[None]:
    """Mark ``run`` FAILED (once) when an exception leaves the block, then let the exception go on.

    Nothing happens when ``run`` is None (an untracked training) or the block ends normally. A
    tracking store that cannot be told is reported as a warning: the training's own error is
    the one that matters.
    """
    try:
        yield
    except Exception:
        if run is not None:
            try:
                mark_failed(run)
            except Exception as err:  # the store is down too: keep the training's error
                logger.warning("MLflow run %s could not be marked FAILED: %s: %s", run["run_id"],
                               type(err).__name__, err)
        raise


def git_commit(root: Path) -> str:
    """``HEAD``'s hash, with ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."

"""Log evaluation results into the MLflow run of the training that produced the model."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.tracking.uri import resolve_tracking_uri

METRIC_PREFIX = "eval/"


def flat_metrics(metrics: Mapping[str, Any], prefix: str = METRIC_PREFIX) -> dict[str, float]:
    """Numeric metrics as MLflow keys: ``eval/AP``, ``eval/AP_per_class/<class>``, ...

    Values of -1 (COCOeval's "no ground truth") are left out, so they do not pollute charts.
    """
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(flat_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and value != -1:
            out[prefix + re.sub(r"[^\w\-. /:]", "_", str(key))] = float(value)
    return out


class TrackingError(RuntimeError):
    """The evaluation could not be recorded in its MLflow run, after every retry."""


def log_to_training_run(run_file: str | Path, metrics: Mapping[str, Any], artifacts: Sequence[str | Path],
                        artifact_path: str = "evaluation", *, retries: int = 3, backoff_s: float = 5.0) -> str | None:
    """Log ``metrics`` and ``artifacts`` (files or folders) into the run named by ``run_file``.

    ``run_file`` is training's ``models/mlflow_run.json`` (``{"run_id", "tracking_uri", ...}``).
    Returns the run id, or None (with a note or warning on stderr) when there is nothing to log
    into: no run file, a malformed one, or a run the tracking store does not have.

    Any other failure (the server down or restarting, a locked database) is retried ``retries``
    times, ``backoff_s`` seconds after the first failure and twice as long after each next one.

    Raises:
        TrackingError: it still failed after the retries. The reports on disk are complete, but
            the stage must fail, or DVC would cache a result whose record is missing.
    """
    run_file = Path(run_file)
    if not run_file.is_file():
        print(f"note: {run_file} not found; evaluation is not logged to MLflow", file=sys.stderr)
        return None
    try:
        info = json.loads(run_file.read_text())
        run_id, uri = info["run_id"], info.get("tracking_uri") or resolve_tracking_uri(None)
    except (ValueError, KeyError, TypeError) as err:
        print(f"warning: {run_file} is not a valid MLflow run file ({err!r}); evaluation is not logged to MLflow",
              file=sys.stderr)
        return None
    for attempt in range(retries + 1):
        try:
            _log(uri, run_id, metrics, artifacts, artifact_path)
            return run_id
        except Exception as err:  # noqa: BLE001 - what failed decides: retry, give up, or stop the stage
            reason = f"{err.__class__.__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
            if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                print(f"warning: could not log evaluation to MLflow run {run_id} at {uri} ({reason}); the run "
                      f"is not in this tracking store, the reports on disk are complete", file=sys.stderr)
                return None
            if attempt == retries:
                raise TrackingError(
                    f"could not log the evaluation to MLflow run {run_id} at {uri} after {retries + 1} tries "
                    f"({reason}). The reports on disk are complete; once the tracking store answers again, rerun "
                    f"`python -m pipeline evaluate` (or `dvc repro`, which reruns this stage because it failed)"
                ) from err
            delay = backoff_s * 2**attempt
            print(f"warning: could not log evaluation to MLflow run {run_id} at {uri} ({reason}); "
                  f"retrying in {delay:.0f}s ({attempt + 1}/{retries})", file=sys.stderr)
            time.sleep(delay)
    return None


def _log(uri: str, run_id: str, metrics: Mapping[str, Any], artifacts: Sequence[str | Path],
         artifact_path: str) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.get_run(run_id)  # fails early and clearly if the run is not there
    now_ms = int(time.time() * 1000)
    values = [Metric(key, value, now_ms, 0) for key, value in flat_metrics(metrics).items()]
    client.log_batch(run_id, metrics=values)
    for path in map(Path, artifacts):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{artifact_path}/{path.name}")
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path)

"""Connecting to Ray and shipping this project to its nodes.

Every process Ray starts for a run (the training workers, the Train controller, Tune's trial
actors, the preflight checks) runs in the job's runtime environment (:func:`runtime_env`):

- **code**: the ``detector`` and ``pipeline`` packages the driver imported (their ``*.py``
  files only), staged into a folder that Ray uploads as the job's ``working_dir``. Every
  process of the run imports them from there, so a node runs the driver's code, not whatever
  version is installed (or checked out at the driver's path) there. A ``working_dir`` rather
  than ``py_modules``: without one, Ray puts the driver's current folder first on the workers'
  ``sys.path``, which on a node with an old checkout at the same path would shadow the shipped
  code. The third-party libraries (torch, torchvision, Ray, MLflow, pycocotools) must be
  installed on every node, in the versions the driver has (preflight compares torch and
  torchvision);
- **environment**: only the variables a run needs (:data:`FORWARDED_ENV`,
  :data:`FORWARDED_ENV_PREFIXES`): storage credentials (workers write checkpoints), tracking
  credentials (the driver-side tracking runs in the Train controller process, which Ray
  starts), and the quiet-log switches. Nothing else of the driver's environment is copied.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.environ import env_restored

logger = logging.getLogger(__name__)

__all__ = ["FORWARDED_ENV", "FORWARDED_ENV_PREFIXES", "SHIPPED_PACKAGES", "ensure_ray", "forwarded_env",
           "ready_autoscaling_coordinator", "runtime_env"]

# The packages shipped to every node (top-level import names); only their Python sources.
SHIPPED_PACKAGES = ("detector", "pipeline")
SHIPPED_FILES = "*.py"

# Run by Ray in every process of the job before any task or actor: the console's logging format.
WORKER_SETUP_HOOK = "pipeline.console.setup_console"

# Environment variables a run needs on the cluster, by exact name ...
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",          # tracking (used by the driver-side tracking in the Train controller)
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_S3_ENDPOINT_URL",       # artifact store on S3-compatible storage
    "MLFLOW_DISABLE_TELEMETRY",
    "RAY_TRAIN_ENABLE_PRINT_PATCH",  # quiet logs
)
# ... and by prefix: cloud storage credentials and settings for ray.storage_path (s3://, gs://, abfs://).
FORWARDED_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_STORAGE_")


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (default: ``os.environ``) that a run forwards to the cluster."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items())
            if k in FORWARDED_ENV or k.startswith(FORWARDED_ENV_PREFIXES)}


@contextmanager
def staged_code() -> Iterator[Path]:
    """A temporary folder holding a copy of :data:`SHIPPED_PACKAGES` (``*.py`` files only)."""
    from pipeline.driver.identity import source_dir

    folder = Path(tempfile.mkdtemp(prefix="detpipe-code-"))
    try:
        for package in SHIPPED_PACKAGES:
            source = source_dir(package)
            for path in source.rglob(SHIPPED_FILES):
                if "__pycache__" in path.parts:
                    continue
                target = folder / package / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def runtime_env(code_dir: str | Path, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime environment: the staged code (:func:`staged_code`), the forwarded variables, and
    :func:`pipeline.console.setup_console` run in every process Ray starts (so the workers print their
    progress like the driver; the training code itself imports nothing of the console)."""
    return {"working_dir": str(code_dir), "env_vars": {**forwarded_env(), **(extra_env or {})},
            "worker_process_setup_hook": WORKER_SETUP_HOOK}


def ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a new local Ray; no-op if connected.

    ``"auto"`` joins the cluster this machine belongs to (``ray start``); ``"local"`` or no
    address always starts a fresh local instance with this machine's CPUs/GPUs. The job runs
    in :func:`runtime_env` (Ray uploads the staged code during ``ray.init``). A Ray that is
    already initialised (by the caller) is used as it is: initialise it inside
    ``with staged_code() as code: ray.init(..., runtime_env=runtime_env(code))`` to ship the code.

    Returns True when this call started/connected Ray (the caller may ``ray.shutdown()``).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        address = None
    extra: dict[str, str] = {}
    kwargs: dict[str, Any] = {}
    # Ray Train's placement-group cleaner (a detached actor) finds the cluster through the State
    # API; with no address it auto-detects and fails when several Ray instances share the machine
    # ("Found multiple active Ray instances"), leaking placement groups. Tell it where to look.
    if address is None:
        # "local": never join whatever /tmp/ray/ray_current_cluster points at (a stale `ray start`)
        address = "local"
        kwargs["dashboard_port"] = _free_port()
        extra["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"
        # Ray Train's PreemptionWatcher watches for nodes being drained (autoscaler, spot); a local
        # single-machine Ray has none. It is an actor with max_restarts=-1 whose constructor takes the
        # workers' actor handles, which makes Ray's core worker log an error line on every run
        # ("... constructor arguments in the object store and max_restarts > 0", ray#53727).
        extra["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    elif address != "auto" and "://" not in address:
        extra["RAY_ADDRESS"] = address
    # A new local instance runs Ray's autoscaler v2 (the default of `ray up` and KubeRay's v2): it
    # reports in the public autoscaler status that no node of this cluster can be added, which
    # preflight reads (Ray's v1 autoscaler, the default of a local instance, reports nothing there).
    autoscaler = {"RAY_enable_autoscaler_v2": "1"} if address == "local" else {}
    with staged_code() as code, env_restored(**autoscaler):
        ray.init(address=address, log_to_driver=True,
                 runtime_env=runtime_env(code, extra), **kwargs)
    return True


def ready_autoscaling_coordinator(timeout_s: float = 120.0) -> bool:
    """Start Ray's autoscaling coordinator (a detached actor) and wait until it answers.

    Ray Train's controller sends its workers' resource request to that actor (Train V2 shares it
    with Ray Data), creating it on the first request and waiting only 5 s for the answer. On a
    loaded node a new actor process takes longer to start, and the controller then prints
    ``Failed to send resource request for train-...`` with a ``GetTimeoutError`` traceback to the
    user's console (harmless: it retries every 20 s). Created here first, with a generous wait,
    the controller finds it running. The actor is Ray's own (named ``AutoscalingCoordinator``,
    ``get_if_exists``), created by Ray's own function; only the import path is Ray-internal, so
    a Ray without it (or a Ray Client driver, which has no node) leaves the job to Ray as before.

    Returns True when the coordinator answered within ``timeout_s``.
    """
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:  # another Ray version: Ray Train creates it itself
        return False
    if ray.util.client.ray.is_connected():  # Ray Client: the actor must live on a cluster node
        return False
    try:
        coordinator = get_or_create_autoscaling_coordinator()
        ray.get(coordinator.__ray_ready__.remote(), timeout=timeout_s)
    except Exception as err:  # noqa: BLE001 - Ray Train retries its requests itself
        logger.info("Ray's autoscaling coordinator is not ready after %.0f s (%s); Ray Train will retry",
                    timeout_s, err)
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

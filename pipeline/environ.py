"""Environment variables the libraries this pipeline drives read their settings from.

Several read ``os.environ`` (MLflow's tracking URI and progress bars, Ray Tune's metric check,
DVC's stage variables for DVCLive, Ray's authentication mode): :func:`env_restored` sets such a
variable for one call and leaves the process as it found it; :func:`choose_local_ray_auth_mode`
states Ray's authentication mode before Ray is imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping

__all__ = ["RAY_AUTH_MODE", "choose_local_ray_auth_mode", "env_restored"]

RAY_AUTH_MODE = "RAY_AUTH_MODE"


@contextlib.contextmanager
def env_restored(*names: str, **values: str) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block; afterwards every variable in ``names`` and
    ``values`` is as before the block (its old value, or unset), whatever the block did to it,
    also when the block raises."""
    before = {name: os.environ.get(name) for name in (*names, *values)}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def choose_local_ray_auth_mode(address: str | None, environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``RAY_AUTH_MODE=token`` when this process will start a new local Ray and the mode is unset.

    A new local Ray turns token authentication on when ``RAY_AUTH_MODE`` is unset (Ray 2.60's
    default) and then warns, on every run, that it chose to. Stating the same choice explicitly
    keeps authentication on and the console free of that line. It must happen before Ray is
    imported (Ray reads the mode into its config at import), so the CLI calls this first; a
    cluster address (``auto``, ``HOST:PORT``, ``ray://...``, or ``RAY_ADDRESS``) or an explicit
    mode is left alone: the cluster's own setting decides. Returns whether it set the mode.
    """
    import sys

    environ = os.environ if environ is None else environ
    address = address or environ.get("RAY_ADDRESS") or None
    if RAY_AUTH_MODE in environ or (address not in (None, "local")) or "ray" in sys.modules:
        return False
    environ[RAY_AUTH_MODE] = "token"
    return True

"""Environment variables changed for the duration of a block, then exactly as before.

Several libraries this pipeline drives read their settings from ``os.environ`` (MLflow's
tracking URI and progress bars, Ray Tune's metric check, DVC's stage variables for DVCLive);
:func:`env_restored` sets such a variable for one call and leaves the process as it found it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["env_restored"]


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

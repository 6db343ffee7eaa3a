"""What a rank reports to the driver at the end of an epoch (the wire format of ``ray.train.report``).

Rank 0's metrics carry the epoch's row (epoch, loss terms, lr, throughput, validation AP,
world size) and the progress rows it printed every ``train.log_every`` steps (:data:`STEPS_KEY`;
the driver may have received them during the epoch already, :mod:`pipeline.tracking.channel`);
its first report after a (re)start also carries the whole history so far (:data:`HISTORY_KEY`).
A node's system-metric samples travel under :data:`SYSTEM_KEY`. The driver's side reads them
back with :class:`pipeline.tracking.progress.EpochReport`.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["HISTORY_KEY", "STEPS_KEY", "SYSTEM_KEY", "epoch_metrics", "is_number"]

STEPS_KEY = "steps"  # rank 0's progress rows inside its epoch report
SYSTEM_KEY = "system"  # a node's system-metric samples, from its local rank 0
HISTORY_KEY = "history"  # rank 0's epoch rows so far, in its first report after a (re)start


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def epoch_metrics(row: dict[str, Any], steps: list[dict[str, float]] | None,
                  system: list[dict[str, Any]] | None = None,
                  history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What a rank reports at the end of an epoch: the row's numbers, plus rank 0's ``steps``
    (and ``history``), plus a node's system-metric samples."""
    out: dict[str, Any] = {k: v for k, v in row.items() if is_number(v)}
    if steps is not None:
        out[STEPS_KEY] = [dict(s) for s in steps]
    if system:
        out[SYSTEM_KEY] = [dict(s) for s in system]
    if history is not None:
        out[HISTORY_KEY] = [{k: v for k, v in r.items() if is_number(v)} for r in history]
    return out

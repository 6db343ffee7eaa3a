"""Tune and Train callbacks of the sweep (imported only when a sweep runs: it imports Ray)."""

from __future__ import annotations

import os
import signal
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from pipeline.tracking.progress import merge_system


class TrialReport(TuneReportCallback):
    """Ray's ``TuneReportCallback`` (a trial's Ray Train reports to Tune), forwarding every rank's
    system-metric samples with rank 0's metrics instead of rank 0's metrics alone: the local
    rank 0 of each node samples its node, and the sweep's driver logs all of them."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            metrics = [merge_system(metrics), *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)

# Test-only hook: the driver interrupts itself (like Ctrl+C) after this many trials completed.
INTERRUPT_ENV = "DETPIPE_TUNE_INTERRUPT_AFTER"


class InterruptAfter(Callback):
    """After ``$DETPIPE_TUNE_INTERRUPT_AFTER`` trials completed in this process, send ourselves
    SIGUSR1, which Tune handles like Ctrl+C: it saves the experiment state and returns.

    Read at run time, so a restored sweep (whose callbacks are unpickled) obeys the
    environment of the rerun, not of the interrupted run.
    """

    def __init__(self) -> None:
        self.completed = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.completed += 1
        limit = int(os.environ.get(INTERRUPT_ENV, "0") or 0)
        if limit and self.completed >= limit:
            os.kill(os.getpid(), signal.SIGUSR1)

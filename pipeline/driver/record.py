"""The run record: what a Ray run folder says about the training in it (``detpipe_run.json``).

The driver writes it when a training starts (``running``) and when it finished (``finished``,
with the final checkpoint, the epochs trained and the MLflow run and model). A later call of
:func:`pipeline.driver.fit` with the same run name reads it to decide whether to reuse the
finished run, continue it, or refuse (:mod:`pipeline.driver.runner`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline.driver import storage

__all__ = ["FINISHED", "RUNNING", "RUN_RECORD", "RunRecord"]

RUN_RECORD = "detpipe_run.json"  # in the Ray run folder <storage_path>/<run_name>
RUNNING, FINISHED = "running", "finished"


@dataclass
class RunRecord:
    """One run's status and inputs (:class:`~pipeline.driver.identity.RunIdentity` as a dict),
    and once finished, its final checkpoint and what was tracked."""

    status: str                                   # RUNNING or FINISHED
    run_name: str
    identity: dict[str, str] = field(default_factory=dict)
    checkpoint_path: str | None = None            # the final checkpoint (finished runs)
    epochs: int = 0                               # epochs trained (finished runs)
    wall_time_s: float = 0.0                      # of the call that finished it
    mlflow_run: dict[str, str] | None = None      # {"run_id", "tracking_uri", "experiment_id"}
    model_uri: str | None = None                  # the logged or registered model

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @classmethod
    def read(cls, run_path: str) -> RunRecord | None:
        """The record in the run folder ``run_path`` (local or ``s3://...``), None when it has none.

        Keys it does not know are ignored and missing ones take their defaults, so records
        written before a field was added still read.
        """
        data = storage.read_json(storage.join(run_path, RUN_RECORD))
        if data is None:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})

    def write(self, run_path: str) -> None:
        """Write this record into the run folder ``run_path`` (atomically on local disk)."""
        storage.write_json(storage.join(run_path, RUN_RECORD), self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mlflow_run"] = dict(self.mlflow_run) if self.mlflow_run else None
        return out

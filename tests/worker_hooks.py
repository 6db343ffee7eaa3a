"""Training hooks the end-to-end tests register on the Ray workers (``fit(..., hooks=[...])``).

Test instrumentation lives here, not in production code: what each rank did (:class:`Record`),
a worker that dies (:class:`ExitAt`) or hangs (:class:`HangAt`) once, a loss that becomes NaN
(:class:`PoisonAt`), warnings from a worker (:class:`Warn`), rank 0 holding a step until the test has seen what it waits for
(:class:`HoldAt`). Ray ships them to the workers by value (this module is not importable
there).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import ray.cloudpickle
import torch

from pipeline.training.engine import HookBase

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def read_records(record_dir: Path) -> dict[int, list[dict]]:
    """What each rank recorded with :class:`Record`, in order: ``{rank: [event, ...]}``."""
    out = {}
    for path in sorted(Path(record_dir).glob("rank*.jsonl")):
        out[int(path.stem[4:])] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


class Record(HookBase):
    """Appends what this rank did to ``record_dir/rank<r>.jsonl``: a ``start`` event (where training
    starts after any resume, on which node, world size, learning rate, where the code was imported
    from) and one ``epoch<i>`` event per epoch (the image ids it trained on)."""

    def __init__(self, record_dir: str | Path):
        self.record_dir = str(record_dir)

    def _write(self, event: str, **data) -> None:
        with open(Path(self.record_dir) / f"rank{self.trainer.rank}.jsonl", "a") as f:
            f.write(json.dumps({"event": event, **data}) + "\n")

    def before_train(self) -> None:
        t = self.trainer
        self._write("start", start_epoch=t.epoch, global_step=t.global_step,
                    optimizer_state_tensors=len(t.optimizer.state), node_id=ray.get_runtime_context().get_node_id(),
                    world_size=t.world_size, base_lr=t.base_lr, lr=t.optimizer.param_groups[0]["lr"],
                    code=sys.modules["pipeline"].__file__)

    def before_epoch(self) -> None:
        self._ids: list[int] = []

    def before_step(self) -> None:
        self._ids += [int(t["image_id"]) for t in self.trainer.batch[1]]

    def after_epoch(self) -> None:
        self._write(f"epoch{self.trainer.epoch - 1}", image_ids=self._ids, world_size=self.trainer.world_size,
                    mlflow_imported="mlflow" in sys.modules)


def _first_to_create(marker: str | Path) -> bool:
    """True for the one process that creates ``marker`` (so a fault fires once across restarts)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class ExitAt(HookBase):
    """Rank ``rank`` kills its own process at global step ``step``, once (``marker`` file)."""

    def __init__(self, step: int, rank: int, marker: str | Path):
        self.step, self.rank, self.marker = step, rank, str(marker)

    def before_step(self) -> None:
        t = self.trainer
        if t.global_step == self.step and t.rank == self.rank and _first_to_create(self.marker):
            print(f"fault injection: rank {t.rank} exits at global step {t.global_step}", file=sys.stderr, flush=True)
            os._exit(1)


class HangAt(HookBase):
    """The first rank to reach global step ``step`` stops making progress (a hung node), once
    (``marker`` file); the other ranks then wait in the next collective."""

    def __init__(self, step: int, marker: str | Path):
        self.step, self.marker = step, str(marker)

    def before_step(self) -> None:
        if self.trainer.global_step == self.step and _first_to_create(self.marker):
            time.sleep(3600)


class HoldAt(HookBase):
    """Rank 0 waits before global step ``step`` until ``release`` exists (at most ``timeout_s``), then
    writes ``released`` or ``timed out`` into ``outcome``: the test watches the driver's side meanwhile."""

    def __init__(self, step: int, release: str | Path, outcome: str | Path, timeout_s: float = 60.0):
        self.step, self.release, self.outcome, self.timeout_s = step, str(release), str(outcome), timeout_s

    def before_step(self) -> None:
        t = self.trainer
        if t.rank != 0 or t.global_step != self.step:
            return
        deadline = time.monotonic() + self.timeout_s
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.05)
        Path(self.outcome).write_text("released" if os.path.exists(self.release) else "timed out")


class PoisonAt(HookBase):
    """Sets the class scores' weights to NaN before global step ``step``: that step's loss is not finite."""

    def __init__(self, step: int):
        self.step = step

    def before_step(self) -> None:
        if self.trainer.global_step == self.step:
            with torch.no_grad():
                for name, p in self.trainer.model_without_ddp.named_parameters():
                    if "cls_score" in name:
                        p.fill_(float("nan"))


class Warn(HookBase):
    """Rank 0 warns ``message`` when training starts, once as a Python warning and once through Ray's
    ``ray.train`` logger: both must reach the driver's console (nothing hides other libraries' warnings)."""

    def __init__(self, message: str):
        self.message = message

    def before_train(self) -> None:
        if self.trainer.rank == 0:
            warnings.warn(f"{self.message} (warnings)", UserWarning, stacklevel=1)
            logging.getLogger("ray.train").warning(f"{self.message} (logging)")

"""Live training metrics for DVC: DVCLive's files, written while training runs.

DVC shows a running experiment from its files: ``dvc exp show`` reads the metrics in the running
experiment's workspace (the repository for ``dvc exp run``, DVC's temporary copy for ``--temp``
and ``--queue``) each time it is called, ``dvc plots show`` its plots, and DVC Studio receives
DVCLive's updates. So the ``train`` stage writes DVCLive's layout into ``dvclive/`` (in the stage's
folder) at the end of every epoch, with the epoch as DVCLive's ``step``:

- ``dvclive/metrics.json``: ``step`` (epochs done), ``loss`` (the epoch's mean training loss)
  and the last validation's ``AP``, ``AP50``, ``AP75``: the live columns of ``dvc exp show``; in
  ``dvc metrics show`` they add two columns (``step``, ``loss``), the AP ones being shared with
  the evaluation's ``reports/metrics.json``;
- ``dvclive/plots/metrics/loss.tsv``, ``AP50.tsv``, ...: one row per epoch, the curves that
  ``dvc plots diff`` overlays across experiments;
- ``dvclive/plots/custom/loss_terms.json``: the total loss and every loss term per epoch, one chart;

and, as rank 0's progress rows arrive during the epoch (every ``train.log_every`` steps, at least
every 30 s), appends them to

- ``dvclive/plots/steps/loss.tsv``, ``loss_cls.tsv``, ..., ``lr.tsv``, ``images_per_s.tsv``: one
  row per progress row, ``step`` being the global step (DVCLive's own TSV format, written by hand:
  DVCLive has one ``step``, the epoch here, which ``dvc exp show`` shows as epochs done and the
  per-epoch plots use). ``dvc.yaml`` declares the folder as a plot with ``x: step``, so ``dvc plots
  show`` draws the step curves of a running experiment, and ``dvc plots diff`` compares them.

The step curves stay out of ``metrics.json``: a per-step loss there would add columns to every
experiment's ``dvc exp show`` and ``dvc metrics show`` that say less than the epoch's mean.

DVCLive runs with ``dvcyaml=False`` and ``save_dvc_exp=False``: the repository's ``dvc.yaml``
declares these files as the ``train`` stage's metrics and plots (DVCLive writing its own
``dvc.yaml`` would rewrite the pipeline's), and DVC itself records the experiment.

:class:`DvcLiveMetrics` is a sink of the workers' progress (:mod:`pipeline.tracking.progress`): it
runs in Ray Train's controller, on the driver's node, whose working directory is Ray's copy of
the code and whose environment lacks DVC's variables. So it writes to an absolute path and gives
DVCLive the stage's folder as working directory and the stage's ``DVC_*`` variables (or, outside
a DVC repository, an empty folder: DVCLive would ``dvc init`` an enclosing git repository). A
report that carries the run's history (the first one after a start, a resume or a restart)
rewrites the epoch files from scratch, so a repeated epoch never appears twice; the first rows a
sink receives replace the step files' rows from that step on (a new run starts at step 1, a
resumed one repeats the steps after its checkpoint), and within a training each step arrives
once (:class:`~pipeline.tracking.progress.Relay`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.environ import env_restored

__all__ = ["LIVE_DIR", "DvcLiveMetrics", "dvc_env"]

LIVE_DIR = Path("dvclive")                 # in the stage's folder; declared in dvc.yaml's train stage
METRICS = ("loss", "AP", "AP50", "AP75")   # dvclive/plots/metrics/<k>.tsv (AP*: epochs with validation)
LOSS_TERMS_PLOT = "loss_terms"             # dvclive/plots/custom/loss_terms.json
STEPS_DIR = Path("plots", "steps")         # dvclive/plots/steps/<k>.tsv: the progress rows (x = global step)
_ENV_PREFIXES = ("DVC_", "DVCLIVE_")       # DVC's experiment variables, DVC Studio's settings, DVCLive's


def dvc_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables DVC sets for a stage (``DVC_ROOT``, ``DVC_EXP_NAME``, ...) and DVCLive reads."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(_ENV_PREFIXES)}


class DvcLiveMetrics:
    """Writes DVCLive's files into ``directory`` after every epoch report, and the progress rows as
    they arrive (see the module doc).

    Args:
        directory: the DVCLive folder (made absolute here, on the driver).
        epochs: the run's last epoch (``train.epochs``): its report ends the DVCLive session.
        stage_dir: DVCLive's working directory (default: the current one, the stage's folder).
        env: DVC's variables for DVCLive (default: :func:`dvc_env` of this process).
    """

    def __init__(self, directory: str | Path = LIVE_DIR, *, epochs: int, stage_dir: str | Path | None = None,
                 env: Mapping[str, str] | None = None):
        self.directory = Path(directory).resolve()
        self.stage_dir = Path(stage_dir).resolve() if stage_dir is not None else Path.cwd()
        self.epochs = int(epochs)
        self.env = dvc_env(env)
        self._live: Any = None
        self._rows: dict[int, dict[str, float]] = {}
        self._steps_started = False  # whether this sink has written step rows yet

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None, "_rows": {}, "_steps_started": False}

    def warm_up(self) -> None:
        """Import DVCLive and DVC (~2 s), called in the background when the sink arrives in the Train controller."""
        importlib.import_module("dvclive")

    def on_epoch(self, report: Any) -> None:
        self.on_steps(report.steps)  # none when the relay delivered them as they came
        if report.epoch < 1:  # a sweep's epoch-0 report (no training yet)
            return
        if report.history is not None or self._live is None:
            self.write(report.history or [report.row()], end=False)
        else:
            self._log(report.row())
        if report.epoch >= self.epochs:
            self._end()

    def on_steps(self, rows: list[dict[str, float]]) -> None:
        """Append progress rows (``step`` = global step, increasing) to ``plots/steps/<k>.tsv``; the
        first rows this sink receives replace what the files hold from their step on."""
        if not rows:
            return
        folder = self.directory / STEPS_DIR
        if not self._steps_started:
            _drop_steps_from(folder, int(rows[0]["step"]))
            self._steps_started = True
        folder.mkdir(parents=True, exist_ok=True)
        for key in sorted({k for r in rows for k in r} - {"step"}):
            with (folder / f"{key}.tsv").open("a") as f:
                if f.tell() == 0:
                    f.write(f"step\t{key}\n")
                f.writelines(f"{int(r['step'])}\t{r[key]!r}\n" for r in rows if key in r)

    def write(self, history: list[dict[str, Any]], end: bool = True) -> None:
        """Write the epoch files from scratch for ``history`` (epoch rows; a repeated epoch: the last
        row wins). The step files are left as they are (a reused run: its folder at least exists,
        as ``dvc.yaml`` declares it)."""
        from dvclive import Live

        (self.directory / STEPS_DIR).mkdir(parents=True, exist_ok=True)
        self._rows = {}
        with self._dvc_context():
            self._live = Live(str(self.directory), dvcyaml=False, save_dvc_exp=False, report=None)
        rows = sorted({int(r["epoch"]): r for r in history}.values(), key=lambda r: int(r["epoch"]))
        for i, row in enumerate(rows):
            self._log(row, sync=i + 1 == len(rows))  # metrics.json once, at the last epoch
        if end:
            self._end()

    def is_current(self, history: list[dict[str, Any]]) -> bool:
        """Whether ``metrics.json`` holds the last epoch of ``history`` (as after a complete run)."""
        try:
            step = json.loads((self.directory / "metrics.json").read_text()).get("step")
        except (OSError, ValueError):
            return False
        return bool(history) and step == max(int(r["epoch"]) for r in history)

    def _log(self, row: dict[str, Any], sync: bool = True) -> None:
        live = self._live
        epoch = int(row["epoch"])
        self._rows[epoch] = {k: float(v) for k, v in row.items()}
        live.step = epoch
        for key in METRICS:
            if key in row:
                live.log_metric(key, float(row[key]))
        if not sync:
            return
        terms = sorted(k for k in row if k == "loss" or k.startswith("loss_"))
        rows = [{"epoch": e, **{k: r[k] for k in terms if k in r}} for e, r in sorted(self._rows.items())]
        live.log_plot(LOSS_TERMS_PLOT, rows, x="epoch", y=terms, template="linear",
                      title="Training loss terms per epoch", y_label="loss (mean over the epoch)")
        with self._dvc_context():
            live.next_step()  # metrics.json, DVC Studio, DVC's VS Code extension

    def _end(self) -> None:
        if self._live is not None:
            with self._dvc_context():
                self._live.end()

    @contextlib.contextmanager
    def _dvc_context(self) -> Iterator[None]:
        """DVCLive reads the repository from the working directory and DVC's state from the
        environment: the stage's, for the duration of a DVCLive call."""
        previous_cwd = os.getcwd()
        inside = self.env.get("DVC_ROOT") or _dvc_root(self.stage_dir)
        with contextlib.ExitStack() as stack:
            cwd = str(self.stage_dir) if inside else stack.enter_context(tempfile.TemporaryDirectory())
            stack.enter_context(env_restored(**self.env))
            os.chdir(cwd)
            try:
                yield
            finally:
                os.chdir(previous_cwd)


def _drop_steps_from(folder: Path, step: int) -> None:
    """Remove the rows at ``step`` and later from the step files in ``folder`` (a file left with no
    rows is removed)."""
    def step_of(line: str) -> float:
        try:
            return int(line.split("\t", 1)[0])
        except ValueError:  # a torn line (a writer that died mid-line): dropped
            return float("inf")

    for path in sorted(folder.glob("*.tsv")):
        header, *lines = path.read_text().splitlines(keepends=True) or [""]
        kept = [line for line in lines if line.endswith("\n") and step_of(line) < step]
        if kept:
            path.write_text("".join([header, *kept]))
        else:
            path.unlink()


def _dvc_root(folder: Path) -> Path | None:
    """The DVC repository (a folder with ``.dvc/``) that contains ``folder``, if any."""
    for candidate in (folder, *folder.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None

"""Live DVC metrics (pipeline/tracking/live.py): DVCLive's files after every epoch, rewritten
from the history after a resume or restart, DVCLive run in the stage's folder and environment."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess

from pipeline.tracking.live import DvcLiveMetrics
from pipeline.tracking.progress import EpochReport

ROWS = [{"epoch": 1, "loss": 2.0, "loss_cls": 1.2, "loss_box": 0.8, "lr": 1e-3},
        {"epoch": 2, "loss": 1.5, "loss_cls": 0.9, "loss_box": 0.6, "lr": 1e-3, "AP50": 0.1, "AP": 0.05},
        {"epoch": 3, "loss": 1.2, "loss_cls": 0.7, "loss_box": 0.5, "lr": 1e-4, "AP50": 0.2, "AP": 0.08}]


def _report(row, history=None):
    return EpochReport(row["epoch"], {k: v for k, v in row.items() if k != "epoch"}, history=history)


def _tsv(path):
    return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(path.open(), delimiter="\t")]


def _as_in_the_controller(sink):
    return pickle.loads(pickle.dumps(sink))  # Ray ships the sink to the Train controller


def test_files_after_each_epoch_and_a_restart_rewrites_them(tmp_path, monkeypatch):
    live_dir = tmp_path / "stage" / "dvclive"
    (tmp_path / "stage").mkdir()
    monkeypatch.chdir(tmp_path)  # the sink resolves its folder on the driver ...
    sink = _as_in_the_controller(DvcLiveMetrics("stage/dvclive", epochs=3))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # ... and writes there from the controller's folder

    sink.on_epoch(_report(ROWS[0], history=ROWS[:1]))  # the first report of a run carries the history
    assert json.loads((live_dir / "metrics.json").read_text()) == {"step": 1, "loss": 2.0}
    sink.on_epoch(_report(ROWS[1]))
    assert json.loads((live_dir / "metrics.json").read_text()) == {"step": 2, "loss": 1.5, "AP": 0.05, "AP50": 0.1}
    # a worker died: the restarted workers repeat epoch 2; their first report has the history again
    sink.on_epoch(_report({**ROWS[1], "loss": 1.4}, history=[ROWS[0], {**ROWS[1], "loss": 1.4}]))
    sink.on_epoch(_report(ROWS[2]))
    assert _tsv(live_dir / "plots/metrics/loss.tsv") == [
        {"step": 1.0, "loss": 2.0}, {"step": 2.0, "loss": 1.4}, {"step": 3.0, "loss": 1.2}]
    assert _tsv(live_dir / "plots/metrics/AP50.tsv") == [{"step": 2.0, "AP50": 0.1}, {"step": 3.0, "AP50": 0.2}]
    terms = json.loads((live_dir / "plots/custom/loss_terms.json").read_text())
    assert [r["epoch"] for r in terms] == [1, 2, 3] and terms[1] == {"epoch": 2, "loss": 1.4, "loss_box": 0.6,
                                                                      "loss_cls": 0.9}
    assert json.loads((live_dir / "metrics.json").read_text())["step"] == 3
    assert not (live_dir / "dvc.yaml").exists() and not (live_dir / "params.yaml").exists()
    assert sink.is_current(ROWS) and not sink.is_current(ROWS[:2])

    # a resumed run (a new sink) starts from its first report's history; a finished one is written at once
    resumed = _as_in_the_controller(DvcLiveMetrics(live_dir, epochs=3))
    resumed.on_epoch(_report(ROWS[2], history=ROWS))
    assert [r["step"] for r in _tsv(live_dir / "plots/metrics/loss.tsv")] == [1.0, 2.0, 3.0]
    DvcLiveMetrics(live_dir, epochs=3).write(ROWS[:1])
    assert json.loads((live_dir / "metrics.json").read_text())["step"] == 1
    assert not (live_dir / "plots/metrics/AP50.tsv").exists()


def test_dvclive_runs_in_the_stages_dvc_repo_and_environment(tmp_path, monkeypatch):
    from dvc.repo import Repo

    stage = tmp_path / "repo"
    stage.mkdir()
    Repo.init(str(stage), no_scm=True).close()
    env = {"DVC_ROOT": str(stage), "DVC_EXP_NAME": "exp-live"}
    sink = _as_in_the_controller(DvcLiveMetrics(stage / "dvclive", epochs=2, stage_dir=stage, env=env))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    sink.on_epoch(_report(ROWS[0], history=ROWS[:1]))
    # DVCLive found the stage's repository and variables: its "step completed" signal (DVC's VS Code
    # extension reads it) is in the repository, and the controller's own folder and environment are unchanged
    signal = stage / ".dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED"
    assert json.loads(signal.read_text())["step"] == 1
    assert sink._live._dvc_repo is not None and sink._live._exp_name == "exp-live"
    assert os.getcwd() == str(tmp_path) and "DVC_ROOT" not in os.environ
    sink.on_epoch(_report(ROWS[1]))  # the last epoch ends the DVCLive session
    assert not signal.exists()


def test_a_git_repository_without_dvc_is_left_alone(tmp_path):
    """DVCLive would `dvc init` a git repository it finds around its working directory."""
    stage = tmp_path / "clone"
    stage.mkdir()
    subprocess.run(["git", "init", "-q", str(stage)], check=True)
    DvcLiveMetrics(stage / "dvclive", epochs=1, stage_dir=stage, env={}).write(ROWS[:1])
    assert not (stage / ".dvc").exists() and (stage / "dvclive" / "metrics.json").is_file()


def _steps(folder, key="loss"):
    return [(int(r["step"]), r[key]) for r in _tsv(folder / "plots" / "steps" / f"{key}.tsv")]


def test_progress_rows_go_to_step_files_as_they_arrive(tmp_path):
    live_dir = tmp_path / "dvclive"
    sink = _as_in_the_controller(DvcLiveMetrics(live_dir, epochs=2, stage_dir=tmp_path, env={}))
    sink.on_steps([{"step": 1, "loss": 2.0, "loss_cls": 1.0, "lr": 1e-4}, {"step": 2, "loss": 1.9, "loss_cls": 0.9,
                                                                          "lr": 2e-4}])
    assert _steps(live_dir) == [(1, 2.0), (2, 1.9)] and _steps(live_dir, "lr") == [(1, 1e-4), (2, 2e-4)]
    assert (live_dir / "plots/steps/loss.tsv").read_text().splitlines()[0] == "step\tloss"  # DVCLive's format
    assert not (live_dir / "metrics.json").exists()  # the epoch's files come with the epoch
    sink.on_epoch(EpochReport(1, {"loss": 1.95}, steps=[{"step": 3, "loss": 1.8, "loss_cls": 0.8, "lr": 3e-4}],
                              history=[{"epoch": 1, "loss": 1.95}]))  # a report handed over whole
    assert _steps(live_dir) == [(1, 2.0), (2, 1.9), (3, 1.8)]
    assert json.loads((live_dir / "metrics.json").read_text()) == {"step": 1, "loss": 1.95}

    # a resumed run (a new sink) repeats the steps after its checkpoint: its first rows replace them
    resumed = _as_in_the_controller(DvcLiveMetrics(live_dir, epochs=2, stage_dir=tmp_path, env={}))
    resumed.on_steps([{"step": 3, "loss": 1.7, "loss_cls": 0.7}, {"step": 4, "loss": 1.6, "loss_cls": 0.6}])
    assert _steps(live_dir) == [(1, 2.0), (2, 1.9), (3, 1.7), (4, 1.6)]
    assert _steps(live_dir, "lr") == [(1, 1e-4), (2, 2e-4)]  # step 3's lr went with the replaced rows
    resumed.write([{"epoch": 1, "loss": 1.95}, {"epoch": 2, "loss": 1.65}])  # the epoch files only
    assert _steps(live_dir) == [(1, 2.0), (2, 1.9), (3, 1.7), (4, 1.6)]
    # a new run starts at step 1: nothing of the old one is left
    fresh = _as_in_the_controller(DvcLiveMetrics(live_dir, epochs=2, stage_dir=tmp_path, env={}))
    fresh.on_steps([{"step": 1, "loss": 3.0}])
    assert _steps(live_dir) == [(1, 3.0)] and sorted(p.name for p in (live_dir / "plots/steps").iterdir()) == ["loss.tsv"]

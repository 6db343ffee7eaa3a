"""The tune stage end to end (pipeline/tune.py, pipeline/tuning/sweep.py): tiny real sweeps.

One Ray session (for the module) runs a 4-trial, 2-epoch ASHA grid sweep on the tiny dataset,
interrupted (like Ctrl+C) after 2 trials and resumed by rerunning the same command: completed
trials are not redone, the MLflow runs nest under one parent (logged by the sweep's driver), and
``best_params.yaml`` validates. A third run of the finished sweep reuses it.
Then a 2-trial, 1-epoch Optuna (TPE) sweep over the default vs the fitted anchors and the RPN
IoU thresholds: Optuna is told every trial's AP, and the winner's names resolve to anchor values.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.params import load_params

TINY_SWEEP = [
    "tune.epochs=2", "tune.grace_period=1", "tune.reduction_factor=2", "tune.max_concurrent_trials=2",
    "tune.workers_per_trial=1", "tune.search=grid", "tune.num_samples=1",
    "tune.space={model.anchors.aspect_ratios: {grid: [[1.0], [0.5, 1.0, 2.0]]}, "
    "model.anchors.scales: {grid: [[2], [4]]}, model.roi.iou_threshold: {uniform: [0.4, 0.6]}}",
    "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50",
]


OPTUNA_SWEEP = [
    "tune.search=optuna", "tune.epochs=1", "tune.num_samples=2",
    "tune.space={model.anchors: {choice: [default, fitted]}, "
    "model.rpn.iou_thresholds: {choice: [[0.3, 0.7], [0.4, 0.5]]}, model.roi.iou_threshold: {uniform: [0.4, 0.6]}}",
]


def _tiny_sweep_params(tmp_path, tiny_params_yaml, *extra):
    storage = tmp_path / "ray"
    return tiny_params_yaml([*TINY_SWEEP, f"ray.storage_path={storage}",
                             f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra])


@pytest.fixture(scope="module")
def local_ray():
    """A new local Ray for the test, set up like ``driver.ensure_ray(None)`` but with
    ``address="local"``: a plain ``ray.init()`` attaches to the cluster named in
    /tmp/ray/ray_current_cluster (another user's, possibly dead) when there is one."""
    import os
    import socket

    import ray

    if ray.is_initialized():
        ray.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: os.environ[k] for k in ("RAY_TRAIN_ENABLE_PRINT_PATCH", "MLFLOW_DISABLE_TELEMETRY")}
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"  # Train's placement-group cleaner finds it
    ray.init(address="local", dashboard_port=port, logging_config=ray.LoggingConfig(log_level="ERROR"),
             runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture
def params_file(tmp_path, tiny_params_yaml):
    return lambda *extra: _tiny_sweep_params(tmp_path, tiny_params_yaml, *extra)


def test_bad_space_fails_before_any_trial(tmp_path, params_file, capsys):
    path = params_file("tune.space={model.rpn.iou_thresholds: {choice: [[0.3, 0.7], [0.3]]}}")
    assert main(["tune", "--params", str(path), "--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "tune.space.model.rpn.iou_thresholds: choice value 1 ([0.3])" in err
    assert not (tmp_path / "ray").exists()  # nothing started


def test_check_optuna_space(tmp_path, params_file, capsys):
    (tmp_path / "anchors.yaml").write_text("model:\n  anchors: {scales: [3], aspect_ratios: [0.5, 2.0]}\n")
    path = params_file(*OPTUNA_SWEEP, f"tune.fitted_anchors={tmp_path / 'anchors.yaml'}", "tune.num_samples=9")
    assert main(["tune", "--params", str(path), "--check", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("tune.space OK: 3 key(s), 9 trial(s) (optuna TPE after 3 random trial(s): model.anchors categorical, "
            "model.rpn.iou_thresholds categorical, model.roi.iou_threshold float)") in out
    (tmp_path / "anchors.yaml").unlink()  # `fitted` without the anchors report: an error before anything starts
    assert main(["tune", "--params", str(path), "--check", "--data-dir", str(tmp_path)]) == 2
    assert "run `python -m pipeline anchors`" in capsys.readouterr().err


def test_check_and_apply(tmp_path, params_file, capsys):
    from pipeline.tuning.results import TrialRecord, write_best_params

    path = params_file()
    assert main(["tune", "--params", str(path), "--check", "--data-dir", str(tmp_path)]) == 0
    assert "tune.space OK: 3 key(s), 4 trial(s) (grid); experiment sweep-" in capsys.readouterr().out
    out = tmp_path / "reports"
    assert main(["tune", "--params", str(path), "--apply", "--out-dir", str(out)]) == 1  # no sweep yet
    winner = TrialRecord("t1", {"model.anchors.aspect_ratios": [0.25, 1.0, 4.0], "model.anchors.scales": [4],
                                "model.roi.iou_threshold": 0.55})
    write_best_params(winner, load_params(path).to_dict(), out / "best_params.yaml", metric="AP50", sweep_id="s")
    assert main(["tune", "--params", str(path), "--apply", "--out-dir", str(out)]) == 0
    params = load_params(path)
    assert params.model["anchors"] == {"scales": [4], "aspect_ratios": [0.25, 1.0, 4.0]}
    assert params.model["roi"]["iou_threshold"] == 0.55


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_sweep_interrupted_then_resumed(tmp_path, tiny_coco, params_file, monkeypatch, local_ray):
    from mlflow.tracking import MlflowClient

    from pipeline.tuning.sweep import run_sweep

    params = load_params(params_file())
    out = tmp_path / "reports"
    # one Ray session for both runs: run_sweep leaves a Ray it did not start running
    monkeypatch.setenv("DETPIPE_TUNE_INTERRUPT_AFTER", "2")
    first = run_sweep(params, data_dir=tiny_coco, out_dir=out, root=tmp_path)
    assert not first.complete and not out.exists()
    progress = sorted(Path(first.experiment_path).glob("*/progress.csv"))
    epochs_before = {p.parent.name: p.read_text().count("\n") for p in progress}

    monkeypatch.delenv("DETPIPE_TUNE_INTERRUPT_AFTER")
    second = run_sweep(params, data_dir=tiny_coco, out_dir=out, root=tmp_path)
    assert second.complete and second.resumed and second.experiment_path == first.experiment_path
    records = {r.trial_id: r for r in second.records}
    assert len(records) == 4
    # trials completed before the interruption were not run again
    done_before = [t for t, r in records.items() if t in epochs_before and r.status != "error"
                   and (Path(first.experiment_path) / t / "progress.csv").read_text().count("\n") == epochs_before[t]]
    assert len(done_before) >= 2
    statuses = sorted(r.status for r in records.values())
    assert set(statuses) <= {"finished", "stopped_early"} and "finished" in statuses
    for r in records.values():
        assert r.history[0]["epoch"] == 0 and 0.0 <= r.history[0]["anchor_bpr"] <= 1.0

    # outputs
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 4 and sum(row["best"] == "True" for row in rows) == 1
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    from detector import DetectorConfig

    config = DetectorConfig.from_dict(best["model"], num_classes=2)
    assert json.loads(rows[[row["best"] for row in rows].index("True")]["model.anchors.scales"]) == config.anchors.scales
    assert (out / "ap_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert second.train_command.startswith("dvc exp run -S 'model.anchors.aspect_ratios=")

    # MLflow: one parent, four children with the trial params and a final status each
    client = MlflowClient(params.mlflow.tracking_uri)
    parent = client.get_run(second.mlflow_run_id)
    assert parent.info.status == "FINISHED" and first.mlflow_run_id == second.mlflow_run_id
    assert parent.data.tags["tune.interrupted"] == parent.data.tags["tune.resumed"] == "true"
    assert {"trials.csv", "best_params.yaml", "ap_vs_params.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["tune.trial_id"] for c in children) == sorted(records)
    for child in children:
        record = records[child.data.tags["tune.trial_id"]]
        assert child.info.status == {"finished": "FINISHED", "stopped_early": "KILLED"}[record.status]
        assert child.data.tags["tune.status"] == record.status
        assert child.data.params["model.anchors.scales"] == str(record.config["model.anchors.scales"])
        assert "anchor_bpr" in child.data.metrics
    assert sum(c.data.tags["tune.best"] == "true" for c in children) == 1
    assert parent.data.tags["tune.best_trial_id"] == second.best.trial_id
    # the trials' metrics were logged by the sweep's driver from their reports (epochs and progress rows),
    # with the system metrics of their workers' node (sampled by the workers); the parent has the driver's
    assert all("epoch/AP50" in c.data.metrics and "train/loss" in c.data.metrics for c in children)
    import ray

    from pipeline.tracking.system_metrics import node_name

    node = node_name(ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())  # one machine
    assert all(f"system/{node}/cpu_utilization_percentage" in run.data.metrics for run in [parent, *children])
    assert parent.data.tags["tune.code_fingerprint"] == children[0].data.tags["code_fingerprint"]

    # the same sweep once more: reused (outputs written again from its results, nothing trained or logged)
    (out / "trials.csv").unlink()
    third = run_sweep(params, data_dir=tiny_coco, out_dir=out, root=tmp_path)
    assert third.reused and third.complete and third.best.trial_id == second.best.trial_id
    assert list(csv.DictReader((out / "trials.csv").open())) == rows
    assert len(client.search_runs([parent.info.experiment_id])) == 1 + len(children)

    # reused into a tracking store that does not know the sweep (a team server, a deleted mlflow.db): the
    # sweep is recorded there (parent + one child per trial with its epochs), tagged as reused, not retrained
    other_uri = f"sqlite:///{tmp_path / 'other.db'}"
    params.mlflow.tracking_uri = other_uri
    fourth = run_sweep(params, data_dir=tiny_coco, out_dir=out, root=tmp_path)
    assert fourth.reused and fourth.best.trial_id == second.best.trial_id
    assert fourth.mlflow_run_id != second.mlflow_run_id
    other = MlflowClient(other_uri)
    new_parent = other.get_run(fourth.mlflow_run_id)
    assert new_parent.info.status == "FINISHED"
    assert new_parent.data.tags["tune.reused_mlflow_run"] == second.mlflow_run_id
    assert new_parent.data.tags["tune.best_trial_id"] == second.best.trial_id
    assert {"trials.csv", "best_params.yaml"} <= {a.path for a in other.list_artifacts(new_parent.info.run_id)}
    new_children = other.search_runs([new_parent.info.experiment_id],
                                     filter_string=f"tags.`mlflow.parentRunId` = '{new_parent.info.run_id}'")
    assert sorted(c.data.tags["tune.trial_id"] for c in new_children) == sorted(records)
    for child in new_children:
        record = records[child.data.tags["tune.trial_id"]]
        assert child.info.status == {"finished": "FINISHED", "stopped_early": "KILLED"}[record.status]
        assert child.data.params["model.anchors.scales"] == str(record.config["model.anchors.scales"])
        history = other.get_metric_history(child.info.run_id, "epoch/AP50")
        assert [m.step for m in history] == [row["epoch"] for row in record.history if "AP50" in row]
    # and once recorded there, the next rerun finds it (no second copy)
    fifth = run_sweep(params, data_dir=tiny_coco, out_dir=out, root=tmp_path)
    assert fifth.reused and fifth.mlflow_run_id == fourth.mlflow_run_id
    assert len(other.search_runs([new_parent.info.experiment_id])) == 1 + len(new_children)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_optuna_sweep_with_fitted_anchors_and_the_held_out_check(tmp_path, tiny_coco, params_file, local_ray,
                                                                     capsys, monkeypatch):
    import pickle

    from pipeline.tuning.sweep import run_sweep

    # the anchors stage writes what `fitted` means
    path = params_file(*OPTUNA_SWEEP, f"tune.fitted_anchors={tmp_path / 'reports' / 'anchors.yaml'}",
                       "anchors.generations=20")
    assert main(["anchors", "--params", str(path), "--data-dir", str(tiny_coco),
                 "--out-dir", str(tmp_path / "reports")]) == 0
    fitted = yaml.safe_load((tmp_path / "reports" / "anchors.yaml").read_text())["model"]["anchors"]
    params = load_params(path)
    out = tmp_path / "reports" / "tune"
    outcome = run_sweep(params, data_dir=tiny_coco, out_dir=out, root=tmp_path)
    assert outcome.complete and len(outcome.records) == 2
    for r in outcome.records:  # Tune's tokens decoded: names for anchor sets, lists for the thresholds
        assert r.config["model.anchors"] in ("default", "fitted")
        assert r.config["model.rpn.iou_thresholds"] in ([0.3, 0.7], [0.4, 0.5])
        assert r.last("AP50") is not None and 0.0 <= r.history[0]["anchor_bpr"] <= 1.0

    # Optuna (the searcher Tune saved) was told each trial's final AP50
    (state,) = Path(outcome.experiment_path).glob("searcher-state-*.pkl")
    with state.open("rb") as f:
        searcher = pickle.load(f)
    study = searcher["searcher"]._ot_study if "searcher" in searcher else searcher["_ot_study"]
    told = sorted(t.value for t in study.trials if t.value is not None)
    assert told == sorted(r.last("AP50") for r in outcome.records)

    best = yaml.safe_load((out / "best_params.yaml").read_text())
    from detector import DetectorConfig

    config = DetectorConfig.from_dict(best["model"], num_classes=2)
    expected = fitted if outcome.best.config["model.anchors"] == "fitted" else params.model["anchors"]
    assert best["model"]["anchors"] == expected and config.rpn.iou_thresholds == \
        outcome.best.config["model.rpn.iou_thresholds"]
    assert "-S 'model.anchors.scales=" in outcome.train_command
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert sorted(row["model.anchors"] for row in rows) == sorted(r.config["model.anchors"] for r in outcome.records)

    # --- tune.held_out: the finished sweep is reused, then the defaults and the winner are retrained (1 epoch each)
    # and scored on a test split that no trial read (here a copy of val: both scores must then agree)
    data = tmp_path / "data"
    data.mkdir()
    for entry in tiny_coco.iterdir():
        (data / entry.name).symlink_to(entry)
    command = ["tune", "--params", str(path), "--data-dir", str(data), "--out-dir", str(out), "--set", "tune.held_out=true"]
    monkeypatch.chdir(tmp_path)  # the stage's state root
    capsys.readouterr()
    assert main(command) == 2  # no test split: refused before anything trains
    assert f"{data / 'test.json'} not found" in capsys.readouterr().err
    (data / "test.json").symlink_to(tiny_coco / "val.json")
    assert main(command) == 0
    console = capsys.readouterr().out
    held = json.loads((out / "held_out.json").read_text())
    assert set(held["rows"]) == {"defaults", "winner"} and held["epochs"] == 1 and "winner - defaults on test" in console
    assert set(held["winner_params"]) == {"model.anchors", "model.rpn.iou_thresholds", "model.roi.iou_threshold"}
    for row in held["rows"].values():
        assert row["test"] == row["val"]
    assert held["test_gain"]["AP"] == pytest.approx(
        100 * (held["rows"]["winner"]["test"]["AP"] - held["rows"]["defaults"]["test"]["AP"]), abs=0.01)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(outcome.mlflow_run_id)
    assert parent.data.metrics["held_out/test_gain_AP"] == held["test_gain"]["AP"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags.get("detpipe.held_out", "") for r in children if "detpipe.held_out" in r.data.tags) == \
        ["defaults", "winner"]

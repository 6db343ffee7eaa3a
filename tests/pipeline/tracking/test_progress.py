"""Progress from the workers to the driver (pipeline/tracking/progress.py): report format, sinks, MLflow."""

import pytest

from pipeline.tracking import progress

ROW = {"epoch": 2, "loss": 0.5, "loss_cls": 0.3, "lr": 1e-3, "images_per_s": 4.0, "epoch_time_s": 2.0,
       "global_step": 8, "world_size": 2, "AP50": 0.25, "note": "text"}
STEPS = [{"step": 5, "loss": 0.6, "lr": 1e-3, "images_per_s": 3.0}, {"step": 8, "loss": 0.4, "lr": 1e-3,
                                                                      "images_per_s": 5.0}]


def test_rank_zero_report_carries_the_steps():
    rank0, rank1 = progress.epoch_metrics(ROW, STEPS), progress.epoch_metrics(ROW, None)
    assert progress.STEPS_KEY not in rank1 and "note" not in rank0 and rank0["AP50"] == 0.25
    report = progress.EpochReport.from_workers([rank0, rank1], checkpoint_path="/ckpt")
    assert report.epoch == 2 and report.checkpoint_path == "/ckpt"
    assert report.metrics == {k: float(v) for k, v in ROW.items() if k not in ("epoch", "note")}
    assert report.steps == STEPS
    assert progress.EpochReport.from_workers([]) is None
    assert progress.EpochReport.from_metrics({"loss": 1.0}) is None  # not an epoch report


def test_tune_result_keys_are_not_metrics():
    result = {**progress.epoch_metrics(ROW, STEPS), "training_iteration": 3, "time_total_s": 9.0, "timestamp": 1,
              "pid": 42, "trial_id": "t1", "checkpoint_path": "/c", "done": False, "time_this_iter_s": 1.0}
    report = progress.EpochReport.from_metrics(result)
    assert set(report.metrics) == {k for k in ROW if k not in ("epoch", "note")}
    assert report.checkpoint_path == "/c" and len(report.steps) == 2
    anchor = progress.EpochReport.from_metrics({"epoch": 0, "anchor_bpr": 0.9, "trial_id": "t1"})
    assert anchor.epoch == 0 and anchor.metrics == {"anchor_bpr": 0.9} and anchor.steps == []


def test_mlflow_sink_logs_epoch_and_step_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    sink = progress.MlflowMetrics(uri, run_id)
    callback = progress.ProgressCallback([sink])
    import pickle

    callback = pickle.loads(pickle.dumps(callback))  # Ray ships it to the Train controller
    callback.after_report(None, [progress.epoch_metrics(ROW, STEPS), progress.epoch_metrics(ROW, None)], None)
    callback.after_report(None, [progress.epoch_metrics({"epoch": 0, "anchor_bpr": 0.7}, [])], None)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(5, 0.6), (8, 0.4)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "epoch/AP50")] == [(2, 0.25)]
    assert [m.step for m in client.get_metric_history(run_id, "epoch/world_size")] == [2]
    assert client.get_run(run_id).data.metrics["anchor_bpr"] == 0.7  # epoch 0: plain names


def test_a_failing_sink_does_not_stop_training(capsys):
    from pipeline.console import setup_console

    setup_console()  # as the Train controller does when the callback arrives there

    class Broken:
        def on_epoch(self, report):
            raise ConnectionError("tracking server down")

    seen = []

    class Recorder:
        def on_epoch(self, report):
            seen.append(report.epoch)

    progress.dispatch([Broken(), Recorder()], progress.EpochReport.from_metrics({"epoch": 1, "loss": 1.0}))
    assert seen == [1]
    assert ("[train] warning: Broken could not record epoch 1: ConnectionError: tracking server down"
            in capsys.readouterr().err)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True])
def test_non_numbers_are_dropped(bad):
    report = progress.EpochReport.from_metrics({"epoch": 1, "loss": bad, "lr": 0.1})
    assert report.metrics == {"lr": 0.1}

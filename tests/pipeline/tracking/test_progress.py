"""Progress from the workers to the driver (pipeline/tracking/progress.py): report format, sinks, MLflow,
the relay of live rows and epoch reports."""

import threading
import time

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


# --------------------------------------------------------------------------- the relay (no Ray)
def _row(step, loss=1.0):
    return {"step": step, "loss": loss, "lr": 1e-3, "images_per_s": 4.0}


def _epoch(epoch, steps, system=None):
    return progress.EpochReport.from_workers([progress.epoch_metrics({"epoch": epoch, "loss": 1.0}, steps,
                                                                     system=system)])


class Channel:
    """A live channel without its actor: ``take`` hands over what was put, oldest first."""

    def __init__(self):
        self.items, self.closed, self._lock = [], False, threading.Lock()

    def put(self, kind, items):
        with self._lock:
            self.items.append((kind, [dict(i) for i in items]))

    def take(self, timeout_s=30.0):
        from pipeline.tracking.channel import ChannelClosed

        if self.closed:
            raise ChannelClosed("closed")
        with self._lock:
            items, self.items = self.items, []
        return items


class Recorder:
    """A sink recording what it receives; counts calls that overlap another one."""

    def __init__(self, delay_s=0.0):
        self.calls, self.overlaps, self.delay_s, self._busy = [], 0, delay_s, False

    def _call(self, what, payload):
        self.overlaps += self._busy
        self._busy = True
        time.sleep(self.delay_s)
        self.calls.append((what, payload))
        self._busy = False

    def on_steps(self, rows):
        self._call("steps", [int(r["step"]) for r in rows])

    def on_system(self, samples):
        self._call("system", len(samples))

    def on_epoch(self, report):
        self._call("epoch", (report.epoch, len(report.steps), len(report.system)))


SAMPLE = {"node": "n", "time": 1_000_000.0, "cpu_utilization_percentage": 5.0}


def test_relay_delivers_live_rows_and_each_step_once():
    channel, sink = Channel(), Recorder()
    relay = progress.Relay([sink], channel)
    channel.put(progress.STEPS_KEY, [_row(1)])
    channel.put(progress.STEPS_KEY, [_row(2)])
    channel.put(progress.SYSTEM_KEY, [SAMPLE])
    assert relay.drain()
    assert sink.calls == [("steps", [1, 2]), ("system", 1)]
    # the epoch's report carries steps 1-3; step 3's put is still in the channel
    channel.put(progress.STEPS_KEY, [_row(3)])
    relay.epoch(_epoch(1, [_row(1), _row(2), _row(3)]))
    assert relay.drain()  # the live copy of step 3: not delivered again
    assert sink.calls[2:] == [("steps", [3]), ("epoch", (1, 0, 0))]
    # a worker fails after step 5 of epoch 2; the restarted workers repeat the epoch from step 4
    for step in (4, 5, 4, 5, 6):
        channel.put(progress.STEPS_KEY, [_row(step, loss=float(step))])
    relay.drain()
    # the report carries the epoch's samples: the one that came live (a copy) and one whose live put was lost
    later = {**SAMPLE, "time": SAMPLE["time"] + 10_000}
    other_node = {**SAMPLE, "node": "m"}  # another node's clock: its own order
    relay.epoch(_epoch(2, [_row(4), _row(5), _row(6)], system=[SAMPLE, later, other_node]))
    assert sink.calls[4:] == [("steps", [4, 5, 6]), ("system", 2), ("epoch", (2, 0, 0))]
    channel.put(progress.SYSTEM_KEY, [later])  # a live copy arriving after the report: not delivered again
    relay.drain()
    assert len(sink.calls) == 7
    channel.closed = True
    assert not relay.drain()  # the driver closed the channel: training ended


def test_relay_thread_and_reports_never_run_a_sink_twice_at_once():
    channel, sink = Channel(), Recorder(delay_s=0.002)
    relay = progress.Relay([sink], channel, poll_s=0.001)
    thread = relay.start()
    for step in range(1, 201):
        channel.put(progress.STEPS_KEY, [_row(step)])
        if step % 50 == 0:  # the epoch reports arrive on another thread (the controller's loop)
            relay.epoch(_epoch(step // 50, [_row(s) for s in range(step - 49, step + 1)]))
        time.sleep(0.0005)
    deadline = time.monotonic() + 30
    while [s for what, steps in sink.calls if what == "steps" for s in steps][-1:] != [200]:
        assert time.monotonic() < deadline, sink.calls
        time.sleep(0.01)
    channel.closed = True
    thread.join(timeout=10)
    assert not thread.is_alive() and sink.overlaps == 0
    assert [s for what, steps in sink.calls if what == "steps" for s in steps] == list(range(1, 201))
    assert [e for what, e in sink.calls if what == "epoch"] == [(e, 0, 0) for e in (1, 2, 3, 4)]


def test_a_sink_failing_live_warns_once_until_it_records_again(capsys):
    from pipeline.console import setup_console

    setup_console()
    channel = Channel()

    class Flaky:
        down = True

        def on_steps(self, rows):
            if self.down:
                raise ConnectionError("tracking server down")

        def on_epoch(self, report):
            pass

    sink = Flaky()
    relay = progress.Relay([sink], channel)
    for step in (1, 2, 3):
        channel.put(progress.STEPS_KEY, [_row(step)])
        relay.drain()
    sink.down = False
    channel.put(progress.STEPS_KEY, [_row(4)])
    relay.drain()
    sink.down = True
    channel.put(progress.STEPS_KEY, [_row(5)])
    relay.drain()
    err = capsys.readouterr().err
    assert err.count("Flaky could not record step") == 2, err
    assert "[train] warning: Flaky could not record step 1: ConnectionError: tracking server down" in err


def test_mlflow_sink_skips_steps_the_run_has(tmp_path):
    """A resumed run (a new sink) repeats the steps after its checkpoint, which an earlier driver logged live."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    progress.MlflowMetrics(uri, run_id).on_steps([_row(1, 0.9), _row(2, 0.8), _row(3, 0.7)])
    resumed = progress.MlflowMetrics(uri, run_id)
    resumed.on_steps([_row(3, 0.75), _row(4, 0.6)])
    resumed.on_epoch(_epoch(2, [_row(4), _row(5, 0.5)]))  # a report handed over whole (a sweep's trial)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [
        (1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6), (5, 0.5)]
    assert [m.step for m in client.get_metric_history(run_id, "epoch/loss")] == [2]

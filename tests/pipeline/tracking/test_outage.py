"""The MLflow sink rides out a tracking-server restart: what it logs while the server is down arrives."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.tracking.progress import EpochReport, MlflowMetrics

OUTAGE_S = 20.0  # a server restart, or a short network outage


@pytest.mark.slow
def test_every_epoch_is_recorded_across_a_20_s_server_restart(tmp_path, monkeypatch, start_server, stop_server):
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)  # MLflow's defaults, as in a training's Train controller
    proc, log, uri = start_server(tmp_path)
    try:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        sink = MlflowMetrics(uri, run_id)
        sink.on_epoch(EpochReport(1, {"loss": 1.0}, steps=[{"step": 2, "loss": 1.0}]))
        stop_server(proc, log, timeout=15)
        errors = []

        def epoch_two():
            try:
                sink.on_epoch(EpochReport(2, {"loss": 0.5}, steps=[{"step": 4, "loss": 0.5}]))
            except Exception as err:  # noqa: BLE001 - the test reports it
                errors.append(err)

        sender = threading.Thread(target=epoch_two, daemon=True)
        sender.start()
        time.sleep(OUTAGE_S)
        assert sender.is_alive(), f"the sink gave up during the outage: {errors}"  # still retrying
        proc, log, _ = start_server(tmp_path, port=int(uri.rsplit(":", 1)[1]))
        sender.join(timeout=180)
        assert not sender.is_alive() and not errors, errors
        assert {m.step: m.value for m in client.get_metric_history(run_id, "epoch/loss")} == {1: 1.0, 2: 0.5}
        assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4]
    finally:
        if proc.poll() is None:
            stop_server(proc, log, timeout=15)

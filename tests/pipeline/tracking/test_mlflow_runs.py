"""The MLflow run of a training (pipeline/tracking/mlflow_runs.py): marking it failed."""

import logging

import pytest

from pipeline.tracking import mlflow_runs


@pytest.fixture
def marked(monkeypatch):
    """The runs :func:`mlflow_runs.mark_failed` was called with, in order (nothing is sent to a store)."""
    calls = []
    monkeypatch.setattr(mlflow_runs, "mark_failed", calls.append)
    return calls


RUN = mlflow_runs.MlflowRun(run_id="r1", tracking_uri="sqlite:///nowhere.db", experiment_id="0")


def test_failed_on_error_marks_the_run_once_and_reraises(marked):
    error = ValueError("loss is nan")
    with pytest.raises(ValueError) as raised, mlflow_runs.failed_on_error(RUN):
        try:
            raise error
        finally:
            assert marked == []  # not before the exception leaves the block
    assert raised.value is error and marked == [RUN]


def test_failed_on_error_does_nothing_without_a_run_or_an_error(marked):
    with pytest.raises(KeyError), mlflow_runs.failed_on_error(None):
        raise KeyError("no run: the error still leaves")
    with mlflow_runs.failed_on_error(RUN):
        pass
    assert marked == []


def test_an_unreachable_store_does_not_hide_the_training_error(monkeypatch, caplog):
    def store_down(run):
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(mlflow_runs, "mark_failed", store_down)
    monkeypatch.setattr(logging.getLogger("pipeline"), "propagate", True)  # caplog listens on the root logger
    with pytest.raises(RuntimeError, match="worker died"), mlflow_runs.failed_on_error(RUN):
        raise RuntimeError("worker died")
    assert "MLflow run r1 could not be marked FAILED: ConnectionError: tracking server down" in caplog.text


def test_failed_on_error_closes_a_real_run_as_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = mlflow_runs.start_run(tracking_uri=uri, experiment_name="e", run_name="r", ray_run=str(tmp_path / "r"),
                                root=tmp_path, params={"train": {"lr": 0.1}}, tags={})
    with pytest.raises(RuntimeError), mlflow_runs.failed_on_error(run):
        raise RuntimeError("training failed")
    assert MlflowClient(uri).get_run(run["run_id"]).info.status == "FAILED"

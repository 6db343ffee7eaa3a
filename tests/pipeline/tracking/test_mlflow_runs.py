"""The MLflow run of a training (pipeline/tracking/mlflow_runs.py): marking it failed."""

import functools
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


def test_find_run_looks_in_the_store_it_is_given(tmp_path):
    """A finished run's MLflow run, looked up again (a reused run): by its id where the store holds it, by the
    Ray run's tag where it holds another run of it, not at all in a store without either."""
    from mlflow.tracking import MlflowClient

    a, b = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    ray_run = str(tmp_path / "ray" / "train-abc")
    run = mlflow_runs.start_run(tracking_uri=a, experiment_name="e", run_name="r", ray_run=ray_run, root=tmp_path,
                                params={}, tags={})
    find = functools.partial(mlflow_runs.find_run, experiment_name="e", ray_run=ray_run)
    assert find(a, run_id=run["run_id"]) == run
    assert find(b, run_id=run["run_id"]) is None  # another store
    other_id = "0123456789abcdef0123456789abcdef"
    assert find(a, run_id=other_id) is None  # the store's run of this Ray run has not finished
    MlflowClient(a).set_terminated(run["run_id"])
    assert find(a, run_id=other_id) == run and find(a, run_id=None) == run
    assert mlflow_runs.model_uri_of(run, "tiny") is None  # it logged no model
    MlflowClient(a).delete_run(run["run_id"])
    assert find(a, run_id=run["run_id"]) is None


def test_history_is_logged_as_the_training_logs_its_epochs(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = mlflow_runs.start_run(tracking_uri=uri, experiment_name="e", run_name="r", ray_run="r", root=tmp_path,
                                params={}, tags={})
    mlflow_runs.log_history(run, [{"epoch": 1, "loss": 2.0, "lr": 0.1}, {"epoch": 2, "loss": 1.5, "lr": 0.1}])
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run["run_id"], "epoch/loss")] == [(1, 2.0), (2, 1.5)]
    assert set(client.get_run(run["run_id"]).data.metrics) == {"epoch/loss", "epoch/lr"}


def test_public_uri_drops_credentials():
    assert mlflow_runs.public_uri("https://user:token@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert mlflow_runs.public_uri("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"

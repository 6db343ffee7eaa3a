"""The driver's pure pieces: run names, storage and tracking defaults, storage checks, continuing a run."""

import pytest

from pipeline import driver
from pipeline.driver import runner, storage
from pipeline.driver.record import FINISHED, RUNNING, RunRecord
from pipeline.tracking import mlflow_runs as tracking


def test_run_name_follows_params_and_data(tiny_params, tiny_coco):
    a, b = tiny_params(), tiny_params("train.lr=0.5")
    name = driver.default_run_name(a, tiny_coco)
    assert name == driver.default_run_name(tiny_params(), tiny_coco)  # deterministic: a rerun resumes
    assert name != driver.default_run_name(b, tiny_coco)              # changed config: a fresh run
    for result_changing in ("ray.num_workers=2", "ray.num_workers=[1,2]", "ray.use_gpu=true", "data.resize.min_size=32"):
        assert name != driver.default_run_name(tiny_params(result_changing), tiny_coco), result_changing
    for infrastructure in ("ray.max_failures=3", "ray.address=auto", "ray.storage_path=/elsewhere",
                           "ray.cpus_per_worker=2", "ray.checkpoints_to_keep=5", "mlflow.tracking_uri=http://h:1",
                           "mlflow.experiment_name=other", "mlflow.log_model=true", "evaluate.batch_size=1"):
        assert name == driver.default_run_name(tiny_params(infrastructure), tiny_coco), infrastructure
    (tiny_coco / "train.json").write_text((tiny_coco / "train.json").read_text() + " ")
    assert name != driver.default_run_name(a, tiny_coco)               # changed data: a fresh run


def test_storage_path_and_tracking_uri_defaults(tmp_path, monkeypatch):
    assert driver.resolve_storage_path(None, tmp_path) == str(tmp_path.resolve() / "ray_results")
    assert driver.resolve_storage_path("s3://bucket/runs", tmp_path) == "s3://bucket/runs"
    monkeypatch.chdir(tmp_path)
    assert driver.resolve_storage_path("rel/dir") == str(tmp_path.resolve() / "rel" / "dir")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:5000")
    assert tracking.resolve_tracking_uri(None, tmp_path) == "http://h:5000"
    assert tracking.resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_preflight_storage_and_tracking_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(storage.StorageError, match="storage_path .* is not writable"):
        storage.check_writable(str(blocker / "runs"))
    with pytest.raises(RuntimeError, match="not reachable"):
        tracking.check_reachable("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(RuntimeError, match="not writable"):
        tracking.check_reachable(f"sqlite:///{blocker}/sub/mlflow.db")


def test_a_finished_run_continues_only_to_train_more_epochs(tiny_params):
    finished = RunRecord(FINISHED, "r", epochs=1)
    runner._check_continuable("r", finished, ["params"], tiny_params("train.epochs=3"))  # more epochs: fine
    runner._check_continuable("r", RunRecord(RUNNING, "r"), ["code"], tiny_params())      # interrupted: fine
    with pytest.raises(runner.TrainingError, match="finished with other code, torch; continuing it would mix"):
        runner._check_continuable("r", finished, ["params", "code", "torch"], tiny_params("train.epochs=3"))
    with pytest.raises(runner.TrainingError, match="already finished 1 epoch.*would train nothing"):
        runner._check_continuable("r", finished, ["params"], tiny_params("train.lr=0.1"))


def test_the_trainer_sends_params_data_and_hooks_to_the_workers(tiny_params, tmp_path):
    class Hook:  # any picklable object the workers' trainer accepts as a hook
        pass

    hook = Hook()
    trainer = runner.build_torch_trainer(tiny_params("ray.num_workers=2", "ray.max_failures=3"), run_name="r",
                                   storage_path=str(tmp_path), data_dir=tmp_path, hooks=[hook])
    config = trainer.train_loop_config
    assert config["hooks"] == [hook] and config["data_dir"] == str(tmp_path)
    assert config["params"].ray.num_workers == 2 and "debug" not in config
    assert trainer.scaling_config.num_workers == 2 and trainer.run_config.failure_config.max_failures == 3

"""``dvc exp run --temp`` on a tiny copy of the repository: tracking survives the temporary copy,
and a code change trains again (a new run, not a resume of the finished one).

Under ``--temp``/``--queue`` DVC runs the stages in a copy under ``.dvc/tmp/exps/`` that it deletes
afterwards; the default MLflow store (``mlflow.db``, ``mlruns/``) and ``ray_results/`` must land in
the repository itself (``DVC_ROOT``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {  # one training epoch of 8 small images on 1 worker: the cheapest real run of the stages
    "data": {"source": "synthetic",
             "synthetic": {"num_train": 8, "num_val": 4, "image_size": 64, "min_object_size": 8,
                           "max_object_size": 32, "min_objects": 1, "max_objects": 2},
             "resize": {"min_size": 64, "max_size": 64}},
    "model": {"backbone": "resnet18", "fpn_channels": 32, "rpn": {"batch_size_per_image": 64},
              "roi": {"batch_size_per_image": 32}},
    "train": {"epochs": 1, "batch_size": 4, "warmup_iters": 1, "lr_steps": [100], "log_every": 1, "val_every": 0,
              "precise_bn_images": 0},
    "ray": {"num_workers": 1},
    "mlflow": {"registered_model_name": None, "log_model": False},
}


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", RAY_TRAIN_ENABLE_PRINT_PATCH="0")
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DVC_ROOT"):
        env.pop(name, None)
    return env


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture
def tiny_repo(repo_clone) -> Path:
    return repo_clone(TINY)


def _runs(repo: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["experiment_name"])
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dvc_exp_temp_keeps_tracking_and_retrains_after_a_code_change(tiny_repo: Path):
    dvc = str(BIN / "dvc")
    first = _run([dvc, "exp", "run", "--temp", "train"], tiny_repo)
    assert "reusing finished run" not in first
    # the temporary copy is gone; its tracking and Ray run are in the repository
    assert not list((tiny_repo / ".dvc" / "tmp" / "exps").glob("tmp*"))
    (run,) = _runs(tiny_repo)
    assert run.info.status == "FINISHED" and run.data.tags.get("dvc_exp_name")
    assert Path(run.data.tags["detpipe.ray_run"]).parent == tiny_repo / "ray_results"
    assert (tiny_repo / "ray_results" / run.data.tags["ray_run_name"] / "detpipe_run.json").is_file()
    assert run.info.artifact_uri.startswith((tiny_repo / "mlruns").as_uri())

    # a code change (a comment in the training loop): `train` reruns and really trains, as a new run
    loop = tiny_repo / "pipeline" / "training" / "loop.py"
    loop.write_text(loop.read_text() + "\n# a change to the training code\n")
    second = _run([dvc, "exp", "run", "--temp", "train"], tiny_repo)
    assert "reusing finished run" not in second and "resuming from the checkpoint" not in second
    old, new = _runs(tiny_repo)
    assert old.info.run_id == run.info.run_id and new.info.status == "FINISHED"
    assert new.data.tags["code_fingerprint"] != old.data.tags["code_fingerprint"]
    assert new.data.tags["ray_run_name"] != old.data.tags["ray_run_name"]
    assert new.data.tags["params_hash"] == old.data.tags["params_hash"]
    assert new.data.metrics["epoch/loss"] > 0  # epoch 1 trained and tracked from the driver

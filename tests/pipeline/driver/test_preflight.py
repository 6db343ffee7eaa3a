"""Preflight decisions without a cluster (pipeline/driver/preflight.py): capacity, data on a node, env.

The checks against a real 2-node cluster are in tests/pipeline/test_train.py.
"""

import hashlib
import json
from pathlib import Path

import pytest

from pipeline.driver import cluster
from pipeline.driver.preflight import (
    DataManifest,
    NodeShape,
    PreflightError,
    check_capacity,
    check_data_files,
    data_manifest,
    worker_request,
)

REPO = Path(__file__).resolve().parents[3]
CPU1 = {"CPU": 1.0}
GPU1 = {"CPU": 1.0, "GPU": 1.0}


def _node(cpus, gpus=0, name="n"):
    return NodeShape(name, {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})})


def _type(cpus, gpus=0, max_count=4, name="gpu-type"):
    return NodeShape(name, {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}, alive=False,
                     max_count=max_count)


def test_worker_request(tiny_params):
    assert worker_request(tiny_params("ray.cpus_per_worker=2")) == {"CPU": 2.0}
    assert worker_request(tiny_params("ray.use_gpu=true", "ray.resources_per_worker={x: 0.5}")) == {
        "CPU": 1.0, "x": 0.5, "GPU": 1.0}


def test_fixed_cluster_fails_fast_when_too_small():
    assert check_capacity(CPU1, 2, 2, [_node(1), _node(1)]) == []
    with pytest.raises(PreflightError, match=r"ray.num_workers=3 .*at most 2 .*does not autoscale"):
        check_capacity(CPU1, 3, 3, [_node(1), _node(1)])
    with pytest.raises(PreflightError, match=r"one worker needs 1 CPU, 1 GPU, more than any node offers \(4 CPU/0 GPU\)"):
        check_capacity(GPU1, 1, 1, [_node(4)])
    with pytest.raises(PreflightError, match="one worker needs 8 CPU"):
        check_capacity({"CPU": 8.0}, 1, 1, [_node(4), _node(2)])


def test_autoscaling_cluster_warns_and_waits():
    # GPU nodes start from zero: nothing fits now, but the autoscaler can start a GPU node
    warnings = check_capacity(GPU1, 2, 2, [_node(4), _type(8, gpus=1)])
    assert len(warnings) == 1 and "0 of 2 worker(s)" in warnings[0] and "autoscaler" in warnings[0]
    # ... unless no node type has what one worker needs, or the types' max counts cannot reach min_workers
    with pytest.raises(PreflightError, match="more than any node offers"):
        check_capacity({"CPU": 1.0, "GPU": 2.0}, 1, 1, [_node(4), _type(8, gpus=1)])
    with pytest.raises(PreflightError, match=r"more than this cluster can grow to \(at most 2 "):
        check_capacity(GPU1, 3, 3, [_node(4), _type(8, gpus=1, max_count=2)])
    assert check_capacity(GPU1, 64, 64, [_node(4), _type(8, gpus=1, max_count=-1)])  # unlimited: a warning


def test_elastic_starts_with_what_fits():
    warnings = check_capacity(CPU1, 1, 4, [_node(1), _node(1)])
    assert len(warnings) == 1 and "starts with 2 worker(s)" in warnings[0]
    with pytest.raises(PreflightError, match=r"ray.num_workers=3..4"):
        check_capacity(CPU1, 3, 4, [_node(1), _node(1)])


def test_data_check_names_what_is_missing(tiny_coco):
    manifest = data_manifest(tiny_coco)
    assert set(manifest.digests) == {"train.json", "val.json"}
    assert manifest.digests["train.json"] == hashlib.sha256((tiny_coco / "train.json").read_bytes()).hexdigest()
    names = [img["file_name"] for img in json.loads((tiny_coco / "train.json").read_text())["images"]]
    assert manifest.images[:3] == [names[0], names[len(names) // 2], names[-1]]
    assert check_data_files(manifest) == []
    elsewhere = DataManifest(str(tiny_coco / "absent"), manifest.digests, manifest.images)
    assert check_data_files(elsewhere) == [f"{tiny_coco / 'absent'}: no such folder"]
    (tiny_coco / manifest.images[1]).unlink()
    (tiny_coco / "val.json").write_text("{}")
    problems = check_data_files(manifest)
    assert problems == [f"{tiny_coco / 'val.json'}: differs from the driver's copy",
                        f"{tiny_coco / manifest.images[1]}: not found"]


def test_forwarded_environment_is_only_what_a_run_needs(monkeypatch):
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "GOOGLE_APPLICATION_CREDENTIALS": "/k.json",
           "MLFLOW_TRACKING_TOKEN": "t", "MLFLOW_TRACKING_URI": "http://m", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           "HOME": "/root", "PATH": "/bin", "DETPIPE_FAULT_AT_STEP": "3", "GITHUB_TOKEN": "x", "MLFLOW_OTHER": "y"}
    assert cluster.forwarded_env(env) == {k: env[k] for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_URI", "RAY_TRAIN_ENABLE_PRINT_PATCH")}
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    with cluster.staged_code() as code:
        shipped = cluster.runtime_env(code, {"RAY_ADDRESS": "h:6379"})
        files = sorted(p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file())
        assert "pipeline/driver/cluster.py" in files and "detector/model.py" in files
        assert all(f.endswith(".py") and f.split("/")[0] in ("detector", "pipeline") for f in files)
        assert (code / "pipeline/training/worker.py").read_bytes() == (REPO / "pipeline/training/worker.py").read_bytes()
    assert not code.exists()  # only staged while Ray uploads it
    assert shipped["working_dir"] == str(code)
    assert shipped["env_vars"]["AWS_REGION"] == "eu-west-1" and shipped["env_vars"]["RAY_ADDRESS"] == "h:6379"

"""Preflight decisions without a cluster (pipeline/driver/preflight.py): capacity, data on a node, env.

The checks against a real 2-node cluster are in tests/pipeline/test_train.py.
"""

import functools
import hashlib
import json
import logging
from pathlib import Path

import pytest

from pipeline.driver import cluster
from pipeline.driver.preflight import (
    AUTOSCALING,
    FIXED,
    UNKNOWN,
    DataManifest,
    NodeShape,
    PreflightError,
    Scaling,
    check_capacity,
    check_cluster_capacity,
    check_data_files,
    cluster_scaling,
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


def _status(*nodes, version="3", launching=()):
    """Ray's public autoscaler status (``ray.autoscaler.v2.schema``) of a cluster with ``nodes``
    (``(node id, node type or None)``: None for a node started by hand) and ``launching`` node types."""
    from ray.autoscaler.v2.schema import ClusterStatus, LaunchRequest, NodeInfo, Stats

    return ClusterStatus(
        idle_nodes=[NodeInfo(instance_type_name="", ray_node_type_name=kind or f"node_{node_id}", instance_id="",
                             ip_address="10.0.0.1", node_status="IDLE", node_id=node_id) for node_id, kind in nodes],
        pending_launches=[LaunchRequest(kind, kind, 1, LaunchRequest.Status.PENDING, 0) for kind in launching],
        stats=Stats(autoscaler_version=version))


def _scaling(*statuses, wait_s=0.0):
    """:func:`cluster_scaling` of a cluster whose status answers ``statuses`` in turn (an exception is raised)."""
    answers = iter(statuses)

    def status():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return cluster_scaling(status, wait_s=wait_s, poll_s=0.0)


def test_the_autoscaler_status_says_whether_the_cluster_can_grow():
    # fixed: the autoscaler reports (v2), every node was started by hand (`ray start`, ray.init)
    assert _scaling(_status(("a1", None), ("b2", None))).state == FIXED
    # autoscaling: nodes of the autoscaler's node types, or nodes being started
    grows = _scaling(_status(("a1", "head"), ("b2", "gpu-group")))
    assert grows == Scaling(AUTOSCALING, "it runs nodes of its autoscaler's node types gpu-group, head")
    assert _scaling(_status(("a1", None), launching=["gpu-group"])).state == AUTOSCALING
    # unknown: no autoscaler has reported (v1, or not yet), or no answer
    unknown = _scaling(_status(("a1", None), version="0"))
    assert unknown.state == UNKNOWN and "no autoscaler reports its state" in unknown.reason
    unknown = _scaling(TimeoutError("GetClusterStatus timed out\nafter 10 s"))
    assert unknown == Scaling(UNKNOWN, "Ray's autoscaler status could not be read (TimeoutError: after 10 s)")
    # a new cluster's autoscaler reports after a few seconds: asked again while it has not
    assert _scaling(_status(("a1", None), version="0"), _status(("a1", None)), wait_s=60).state == FIXED


def _preflight_messages(caplog) -> list[str]:
    """Preflight's warnings, in order, each once: after earlier tests in the same process (the sweep's, which
    configure Ray's and the console's logging) pytest's capture may receive a record twice; what the user's
    console shows once is tested in tests/pipeline/test_console.py."""
    return list(dict.fromkeys(r.getMessage() for r in caplog.records if r.name == "pipeline.driver.preflight"))


def test_a_cluster_whose_autoscaler_state_is_unknown_warns_instead_of_failing(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("pipeline"), "propagate", True)  # caplog listens on the root logger
    nodes = [_node(1), _node(1)]
    unknown = functools.partial(_scaling, TimeoutError("no answer"))
    with caplog.at_level(logging.WARNING, logger="pipeline.driver.preflight"):
        check_cluster_capacity(CPU1, 3, 3, nodes, scaling=unknown)
        check_cluster_capacity(GPU1, 1, 1, nodes, scaling=unknown)  # a GPU node type may exist
    first, second = _preflight_messages(caplog)
    assert first.startswith("could not tell whether the cluster can start more nodes: Ray's autoscaler status "
                            "could not be read (TimeoutError: no answer). Going on as if it can: 2 of 3 worker(s)")
    assert "If it cannot grow, the training waits for ever: lower ray.num_workers" in first
    assert "no node running now can hold one worker (1 CPU, 1 GPU)" in second
    # the same cluster, known to be fixed, fails at once
    fixed = functools.partial(_scaling, _status(("a1", None), ("b2", None)))
    with pytest.raises(PreflightError, match=r"ray.num_workers=3 .*at most 2 .*does not autoscale"):
        check_cluster_capacity(CPU1, 3, 3, nodes, scaling=fixed)
    with pytest.raises(PreflightError, match="one worker needs 1 CPU, 1 GPU, more than any node offers"):
        check_cluster_capacity(GPU1, 1, 1, nodes, scaling=fixed)
    # an autoscaling one waits for its autoscaler; where every worker fits now, nobody asks
    grows = functools.partial(_scaling, _status(("a1", "head"), launching=["gpu-group"]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.driver.preflight"):
        check_cluster_capacity(GPU1, 2, 2, nodes, scaling=grows)
        check_cluster_capacity(CPU1, 2, 2, nodes, scaling=lambda: pytest.fail("asked the autoscaler"))
    (warning,) = _preflight_messages(caplog)
    assert warning == ("no node running now can hold one worker (1 CPU, 1 GPU); Ray Train waits for the autoscaler "
                       "to start one that can (its autoscaler is starting nodes of type gpu-group)")


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

"""Batch inference on Ray Data (``evaluate.cluster: true``): the same detections and metrics as in process,
unreadable images listed and left out, the bad-image policy."""

import dataclasses
import json

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow


def _tiny_model(class_names):
    from detector import DetectorConfig, build_model

    config = DetectorConfig.from_dict(
        {"backbone": "mobilenet_v3_large", "fpn_channels": 16, "roi": {"head_dim": 32},
         "rpn": {"pre_nms_topk_test": 100, "post_nms_topk_test": 50}}, num_classes=len(class_names),
        class_names=class_names)
    torch.manual_seed(0)
    return build_model(config).eval()


def test_cluster_detections_and_metrics_equal_the_in_process_ones(tmp_path, tiny_coco, tiny_params, module_local_ray):
    from pipeline.evaluate import evaluate

    val = tiny_coco / "val.json"
    names = [c["name"] for c in json.loads(val.read_text())["categories"]]
    model = _tiny_model(names)
    # a corrupt image: listed and left out of the metrics on the cluster, left out here by hand
    params = tiny_params("evaluate.score_threshold=0.0", "evaluate.num_pictures=1", "evaluate.batch_size=2",
                         "evaluate.replicas=[1,2]")
    on_cluster, _ = evaluate(model, val, tmp_path / "ray", params.evaluate, params.data.resize)
    local = dataclasses.replace(params.evaluate, cluster=False)
    in_process, _ = evaluate(model, val, tmp_path / "local", local, params.data.resize)
    detections = json.loads((tmp_path / "ray" / "detections.json").read_text())
    assert detections and detections == json.loads((tmp_path / "local" / "detections.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "AP_per_class"):
        assert on_cluster[key] == in_process[key], key
    assert on_cluster["num_images"] == in_process["num_images"] == 4 and on_cluster["skipped"] == []
    assert on_cluster["images_per_s"] > 0 and len(on_cluster["replica_nodes"]) == 1


def test_unreadable_images_are_listed_and_left_out(tmp_path, tiny_coco, tiny_params, module_local_ray):
    from pipeline.evaluate import evaluate
    from pipeline.evaluation.batch_inference import BadImagesError

    val = tiny_coco / "val.json"
    coco = json.loads(val.read_text())
    names = [c["name"] for c in coco["categories"]]
    bad = tiny_coco / coco["images"][0]["file_name"]  # the first: evaluate.num_pictures=1 draws the next one
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    params = tiny_params("evaluate.score_threshold=0.0", "evaluate.num_pictures=1", "evaluate.replicas=[1,1]")
    metrics, _ = evaluate(_tiny_model(names), val, tmp_path / "out", params.evaluate, params.data.resize,
                          data=dataclasses.replace(params.data, max_bad_fraction=0.5))
    assert [item["path"] for item in metrics["skipped"]] == [str(bad)] and metrics["num_skipped"] == 1
    assert metrics["skipped"][0]["error"].startswith(("OSError", "UnidentifiedImageError"))
    detections = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert coco["images"][0]["id"] not in {d["image_id"] for d in detections}
    with pytest.raises(BadImagesError, match=r"1 of 4 images could not be read"):
        evaluate(_tiny_model(names), val, tmp_path / "out", params.evaluate, params.data.resize)
    with pytest.raises(BadImagesError, match=str(bad.name)):
        evaluate(_tiny_model(names), val, tmp_path / "out", params.evaluate, params.data.resize,
                 data=dataclasses.replace(params.data, bad_images="fail"))
    assert Image.open(tmp_path / "out" / "predictions" / "grid.png").size[0] > 0
    assert (tmp_path / "out" / "predictions" / f"image_{coco['images'][1]['id']}.png").is_file()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args, log_path, env):
    """``ray start ... --block`` in a process group of its own (stopped with its processes by the test)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    log = open(log_path, "a")  # noqa: SIM115 - closed by stop_server
    return subprocess.Popen([exe, "start", "--block", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True), log


def test_a_head_with_no_cpus_does_no_inference(tmp_path, tiny_coco, tiny_params_yaml, stop_server):
    """Two nodes on this machine, token authentication on: the head (``--num-cpus=0``, where the driver
    connects) and a 2-CPU worker node. ``evaluate`` and ``predict`` (run as a user runs them, in processes
    of their own) decode and detect on the worker only."""
    import os
    import secrets
    import subprocess
    import sys
    import time

    from detector import save_checkpoint

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    started = []

    def python(*args):
        done = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=400, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    try:
        started.append(_ray_start(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                                   f"--dashboard-port={_free_port()}"], tmp_path / "head.log", env))
        time.sleep(5)
        started.append(_ray_start([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=2"],
                                  tmp_path / "worker.log", env))
        nodes = json.loads(python("-c", f"""
import json, time, ray
ray.init(address="{address}")
deadline = time.monotonic() + 120
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(1)
print(json.dumps({{n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}}))
""").splitlines()[-1])
        worker = [node for node, cpus in nodes.items() if cpus]
        assert len(nodes) == 2 and len(worker) == 1, nodes

        tiny_params_yaml([f"ray.address={address}", "evaluate.num_pictures=1", "evaluate.replicas=[1,2]"])
        names = [c["name"] for c in json.loads((tiny_coco / "val.json").read_text())["categories"]]
        save_checkpoint(tmp_path / "model.pt", _tiny_model(names))
        python("-m", "pipeline", "evaluate", "--model", "model.pt", "--val", str(tiny_coco / "val.json"),
               "--out", "reports")
        evaluation = json.loads((tmp_path / "reports" / "evaluation.json").read_text())
        assert evaluation["decode_nodes"] == evaluation["replica_nodes"] == worker
        python("-m", "pipeline", "predict", "--model", "model.pt", "--images", str(tiny_coco / "images" / "val"),
               "--out", "predicted")
        summary = json.loads((tmp_path / "predicted" / "summary.json").read_text())
        assert summary["decode_nodes"] == summary["replica_nodes"] == worker and summary["num_images"] == 4
    finally:
        for proc, log in reversed(started):
            stop_server(proc, log, timeout=30)

"""The ``train`` stage end to end on a tiny dataset with 2 CPU workers (Ray Train + MLflow).

Ray runs cost ~15-40 s each on 2 cores, so each test combines several checks:

- ``test_stage_resume_fault_tolerance_and_mlflow``: a 1-epoch run (disjoint shards, outputs, a
  console without warnings), then the same run name with 3 epochs (resumes at epoch 2 with the
  optimiser state, survives a worker killing itself in epoch 3; the live DVC metrics are
  rewritten after every epoch, with no epoch twice), all in one MLflow run on a real
  ``mlflow server`` with the driver's node's system metrics, whose registered pyfunc model
  (``models:/NAME@latest-train``, tagged with the commit, the DVC experiment and the val metrics)
  loads with ``mlflow.pyfunc.load_model`` and detects. An identical rerun reuses the finished
  run: no worker starts, no new model version. The same command with an empty sqlite store
  records the reused run there (one run with its params, epoch metrics, model and a registry
  version, which ``models/mlflow_run.json`` names) and reuses that run from then on.
- ``test_step_metrics_arrive_during_the_epoch``: a 1-epoch run with ``train.log_every: 1`` whose rank 0
  holds its last step until the earlier steps' rows are in MLflow (``train/loss``) and in
  ``dvclive/plots/steps/`` while the epoch's report is not: the rows came through the live channel.
  Each step is recorded once, although the epoch's report carries the rows again.
- ``test_a_corrupt_image_is_skipped_counted_and_listed``: 2 workers, one training JPEG with damaged
  scan data: every epoch finishes, the file is logged, ``epoch/bad_images`` is 1 in MLflow (the
  ranks' counts gathered) and ``bad_images.json`` lists it; with the default ``data.max_bad_fraction``
  the run stops with a :class:`TooManyBadImagesError` that names it (no Ray retries).
- ``test_cluster_preflight_elastic_training_tracking_and_non_finite_loss``: a local 3-node
  ``ray.cluster_utils.Cluster`` (a CPU-less head, where the driver is, and two 1-CPU nodes):
  too many workers / GPUs and data missing on one node fail before training; an elastic
  ``[1, 2]``-worker run with workers on both nodes survives the loss of one node and finishes
  on the other, tracked from the driver into the default sqlite store (with system metrics of
  the driver's node and of the workers' nodes); a NaN loss names the step.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from worker_hooks import ExitAt, HangAt, HoldAt, PoisonAt, Record, Warn, read_records

from pipeline.cli import main

pytestmark = pytest.mark.slow


def _stage_hooks(monkeypatch, *hooks, driver_warning: str | None = None) -> None:
    """Run the ``train`` stage's :func:`pipeline.driver.fit` with these worker hooks (:mod:`worker_hooks`);
    ``driver_warning``: then the driver warns it through a third-party logger (``torch.distributed``,
    whose records reach the root logger), while Ray still runs."""
    import pipeline.driver

    def fit(*args, **kwargs):
        result = pipeline.driver.runner.fit(*args, hooks=list(hooks), **kwargs)
        if driver_warning:
            logging.getLogger("torch.distributed").warning(driver_warning)
        return result

    monkeypatch.setattr(pipeline.driver, "fit", fit)


def _system_streams(client, run_id: str) -> dict[str, list[int]]:
    """The run's system-metric streams: node name -> steps of its CPU samples."""
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("system/")]
    assert all(k.count("/") == 2 for k in keys), keys  # system/<node>/<metric>
    return {k.split("/")[1]: [m.step for m in client.get_metric_history(run_id, k)]
            for k in keys if k.endswith("/cpu_utilization_percentage")}


class _Watch:
    """Records every new value of ``step`` in a JSON file while a block runs (in a thread)."""

    def __init__(self, path: Path):
        self.path, self.seen, self._stop = path, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(0.05):
            try:
                step = json.loads(self.path.read_text())["step"]
            except (OSError, ValueError, KeyError):
                continue
            if not self.seen or self.seen[-1] != step:
                self.seen.append(step)


def test_stage_resume_fault_tolerance_and_mlflow(tmp_path, tiny_coco, tiny_params_yaml, mlflow_server, local_ray,
                                                 monkeypatch, capfd, console_noise):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from detector import load_checkpoint

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_coco, tmp_path / "data" / "prepared")
    debug = tmp_path / "debug"
    debug.mkdir()
    _stage_hooks(monkeypatch, Record(debug))
    params = tiny_params_yaml([
        "ray.num_workers=2", "ray.storage_path=ray_results", f"mlflow.tracking_uri={mlflow_server}",
        "mlflow.experiment_name=stage-test", "train.val_every=2",
    ])

    # --- 1 epoch on 2 workers (8 images, 2 per step each: 2 steps per epoch); a console without noise
    capfd.readouterr()
    assert main(["train", "--params", str(params), "--run-name", "run-a"]) == 0
    console = "".join(capfd.readouterr())
    assert "epoch 1/1 step 2/2 loss" in console and "[train] done: 1 epochs" in console
    assert console_noise(console) == [], console
    assert json.loads(Path("dvclive/metrics.json").read_text())["step"] == 1
    records = read_records(debug)
    assert sorted(records) == [0, 1]
    seen = [set(next(r for r in records[rank] if r["event"] == "epoch0")["image_ids"]) for rank in (0, 1)]
    assert not seen[0] & seen[1], "two ranks trained on the same image in one epoch"
    assert len(seen[0]) == len(seen[1]) == 4 and len(seen[0] | seen[1]) == 8
    model = load_checkpoint("models/model.pt")
    assert model.class_names == ["red_box", "blue_box"]
    summary = json.loads(Path("reports/train.json").read_text())
    assert summary["epochs"] == 1 and summary["world_size"] == 2 and summary["images_per_s"] > 0
    assert {"loss", "loss_cls", "loss_box", "loss_rpn_obj", "loss_rpn_box", "wall_time_s"} <= set(summary)
    assert Path("reports/loss_curve.png").stat().st_size > 1000
    run_info = json.loads(Path("models/mlflow_run.json").read_text())
    assert run_info["tracking_uri"] == mlflow_server

    # --- same run, 3 epochs: resumes after epoch 1; a worker dies once at the start of epoch 3
    shutil.rmtree(debug)
    debug.mkdir()
    # global step 4 = first step of epoch 3; rank 1 exits once. A worker and the driver warn: both reach the console
    _stage_hooks(monkeypatch, Record(debug), ExitAt(4, rank=1, marker=tmp_path / "fault-fired"),
                 Warn("a worker's warning"), driver_warning="the driver's warning")
    capfd.readouterr()
    monkeypatch.setenv("DVC_EXP_NAME", "exp-tiny")  # as under `dvc exp run`
    with _Watch(tmp_path / "dvclive" / "metrics.json") as live:
        assert main(["train", "--params", str(params), "--run-name", "run-a", "--set", "train.epochs=3",
                     "--set", "mlflow.log_model=true", "--set", "mlflow.registered_model_name=tiny-frcnn"]) == 0
    assert (tmp_path / "fault-fired").exists()
    console = "".join(capfd.readouterr())
    for line in ("UserWarning: a worker's warning (warnings)", "a worker's warning (logging)", "the driver's warning"):
        assert line in console, console
    starts = [r for r in read_records(debug)[0] if r["event"] == "start"]
    # resumed after epoch 1, then restarted from the latest persisted checkpoint after the fault: epoch 2's
    # report, made a moment before the crash, may not have been persisted yet (epochs are idempotent)
    assert [s["start_epoch"] for s in starts] in ([1, 2], [1, 1]), starts
    assert all(s["optimizer_state_tensors"] > 0 for s in starts)  # momentum buffers restored
    rows = list(csv.DictReader(Path("reports/train_curve.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert all(r["AP50"] != "" for r in rows)  # the last epoch of each run, and every val_every=2
    assert json.loads(Path("reports/train.json").read_text())["epochs"] == 3
    # live DVC metrics: DVCLive's files were rewritten after epoch 2 (while epoch 3 trained, restart
    # included; a rewrite from the history writes metrics.json once) and after epoch 3; the resumed run's
    # history and the repeated epoch each appear once
    assert live.seen[0] == 1 and live.seen[-1] == 3 and 2 in live.seen, live.seen
    loss = list(csv.DictReader(Path("dvclive/plots/metrics/loss.tsv").open(), delimiter="\t"))
    assert [(r["step"], float(r["loss"])) for r in loss] == [(r["epoch"], pytest.approx(float(r["loss"]), rel=1e-5))
                                                           for r in rows]
    assert [r["epoch"] for r in json.loads(Path("dvclive/plots/custom/loss_terms.json").read_text())] == [1, 2, 3]

    # --- exactly one MLflow run for the whole training, with params, metrics and the model
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("stage-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == run_info["run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.batch_size"] == "2" and run.data.params["model.backbone"] == "resnet18"
    assert run.data.tags["world_size"] == "2" and "git_commit" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "epoch/loss")
    assert {m.step for m in history} == {1, 2, 3}
    assert client.get_metric_history(run.info.run_id, "train/loss")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"params.yaml", "train.json", "train_curve.csv", "loss_curve.png"} <= artifacts
    version = client.get_model_version_by_alias("tiny-frcnn", "latest-train")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    assert version.tags["git_commit"] == run.data.tags["git_commit"] and version.tags["dvc_exp_name"] == "exp-tiny"
    assert float(version.tags["val_AP50"]) == pytest.approx(float(rows[-1]["AP50"]), abs=1e-4)
    assert {"code_fingerprint", "torch_version", "params_hash", "data_hash"} <= set(run.data.tags)
    # system metrics: one stream, the driver's node (its workers, on the same node, do not sample it again),
    # continued by the resumed run
    import ray

    from pipeline.tracking.system_metrics import node_name

    streams = _system_streams(client, run.info.run_id)
    node = node_name(ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())
    assert list(streams) == [node] and streams[node] == list(range(len(streams[node]))) and len(streams[node]) >= 2
    assert run.data.metrics[f"system/{node}/system_memory_usage_megabytes"] > 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # models:/ resolves through the registry
    loaded = mlflow.pyfunc.load_model("models:/tiny-frcnn@latest-train")
    png = io.BytesIO()
    Image.fromarray(torch.randint(0, 255, (48, 64, 3), dtype=torch.uint8).numpy()).save(png, format="PNG")
    (row,) = loaded.predict(pd.DataFrame({"image": [png.getvalue()]})).to_dict("records")
    assert (row["width"], row["height"]) == (64, 48)
    assert set(row["class_names"]) <= {"red_box", "blue_box"} and len(row["boxes"]) == len(row["scores"])

    # --- the identical command again: the finished run is reused as it is (no worker starts, nothing is
    # logged, no new model version), and the stage's outputs are written again from its final checkpoint
    trained = load_checkpoint("models/model.pt").state_dict()
    shutil.rmtree(debug)
    debug.mkdir()
    for output in ("models/model.pt", "models/mlflow_run.json", "reports/train.json"):
        Path(output).unlink()
    same_command = ["train", "--params", str(params), "--run-name", "run-a", "--set", "train.epochs=3",
                    "--set", "mlflow.log_model=true", "--set", "mlflow.registered_model_name=tiny-frcnn"]
    capfd.readouterr()
    assert main(same_command) == 0
    console = "".join(capfd.readouterr())
    assert "reusing finished run run-a" in console and console_noise(console) == [], console
    assert not list(debug.iterdir())  # no worker ran
    reused = load_checkpoint("models/model.pt").state_dict()
    assert all(torch.equal(reused[k], v) for k, v in trained.items())
    assert json.loads(Path("models/mlflow_run.json").read_text())["run_id"] == run_info["run_id"]
    assert json.loads(Path("reports/train.json").read_text())["epochs"] == 3
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert [v.version for v in client.search_model_versions("name='tiny-frcnn'")] == ["1"]

    # --- the identical command with an empty tracking store (a local file instead of the server): the finished
    # run is reused, and that store receives one run recording it (its params, tags saying where it comes from,
    # the epoch metrics, artifacts, the model, a registry version), which models/mlflow_run.json names
    store_b = f"sqlite:///{tmp_path / 'b.db'}"
    capfd.readouterr()
    assert main([*same_command, "--set", f"mlflow.tracking_uri={store_b}"]) == 0
    console = "".join(capfd.readouterr())
    assert f"its MLflow run {run.info.run_id} ({mlflow_server}) is not in the tracking store {store_b}: recording " \
           "the reused model there" in console and console_noise(console) == [], console
    assert not list(debug.iterdir())  # still no worker ran
    client_b = MlflowClient(store_b, registry_uri=store_b)
    (recorded,) = client_b.search_runs([e.experiment_id for e in client_b.search_experiments()])
    run_b = recorded.info.run_id
    assert json.loads(Path("models/mlflow_run.json").read_text()) == {
        "run_id": run_b, "tracking_uri": store_b, "experiment_id": recorded.info.experiment_id}
    assert recorded.info.status == "FINISHED" and recorded.info.run_name == "run-a"
    assert recorded.data.params == {**run.data.params, "train.epochs": "3"}  # the server's run began with 1 epoch
    tags = recorded.data.tags
    assert (tags["detpipe.reused_mlflow_run"], tags["detpipe.reused_tracking_uri"]) == (run.info.run_id, mlflow_server)
    assert tags["detpipe.reused_from"] == tags["detpipe.ray_run"] == run.data.tags["detpipe.ray_run"]
    assert all(tags[k] == run.data.tags[k] for k in ("code_fingerprint", "data_hash", "world_size", "git_commit"))
    assert [(m.step, m.value) for m in client_b.get_metric_history(run_b, "epoch/loss")] == [
        (int(r["epoch"]), pytest.approx(float(r["loss"]), rel=1e-5)) for r in rows]
    assert {k for k in recorded.data.metrics if k.startswith("epoch/")} == {
        k for k in run.data.metrics if k.startswith("epoch/")}
    assert {"params.yaml", "train.json", "train_curve.csv", "loss_curve.png"} <= {
        a.path for a in client_b.list_artifacts(run_b)}
    (version,) = client_b.search_model_versions("name='tiny-frcnn'")
    assert version.run_id == run_b and str(version.version) == "1"
    assert str(client_b.get_model_version_by_alias("tiny-frcnn", "latest-train").version) == "1"
    assert float(version.tags["val_AP50"]) == pytest.approx(float(rows[-1]["AP50"]), abs=1e-4)
    (model,) = client_b.search_logged_models([recorded.info.experiment_id])
    assert model.source_run_id == run_b and version.source == f"models:/{model.model_id}"
    # again with that store: its run is reused as it is; back with the server: the server's own run of it
    capfd.readouterr()
    assert main([*same_command, "--set", f"mlflow.tracking_uri={store_b}"]) == 0
    assert f"reusing finished run run-a (MLflow run {run_b})" in "".join(capfd.readouterr())
    assert len(client_b.search_runs([recorded.info.experiment_id])) == 1
    assert len(client_b.search_model_versions("name='tiny-frcnn'")) == 1
    capfd.readouterr()
    assert main(same_command) == 0
    assert f"the tracking store {mlflow_server} holds its MLflow run {run.info.run_id} (its record named run {run_b} " \
           f"of {store_b}): using that one" in "".join(capfd.readouterr())
    assert json.loads(Path("models/mlflow_run.json").read_text())["run_id"] == run_info["run_id"]
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert [v.version for v in client.search_model_versions("name='tiny-frcnn'")] == ["1"]


def _tsv_steps(path: Path) -> list[int]:
    try:
        return [int(r["step"]) for r in csv.DictReader(path.open(), delimiter="\t")]
    except OSError:
        return []


def test_step_metrics_arrive_during_the_epoch(tmp_path, tiny_coco, tiny_params, local_ray, capfd, console_noise):
    """~25 s: 8 images, 1 worker, batch 2: 4 steps; rank 0 holds step 4 until steps 1-3 are recorded."""
    from mlflow.tracking import MlflowClient

    from pipeline.driver import Tracking, fit
    from pipeline.tracking.live import DvcLiveMetrics

    params = tiny_params("train.log_every=1", "train.val_every=0", "train.precise_bn_images=0")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the default store of root=tmp_path
    steps_tsv = tmp_path / "dvclive" / "plots" / "steps" / "loss.tsv"
    release, outcome = tmp_path / "release", tmp_path / "outcome"
    seen: dict[str, list[int]] = {}

    def watch():  # what the driver's side recorded while rank 0 holds its last step
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not outcome.exists():
            try:
                client = MlflowClient(uri)
                (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
                mlflow_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
                epochs = client.get_metric_history(run.info.run_id, "epoch/loss")
            except Exception:  # no store or run yet
                mlflow_steps, epochs = [], []
            if sorted(mlflow_steps) == [1, 2, 3] and _tsv_steps(steps_tsv) == [1, 2, 3]:
                seen.update(mlflow=sorted(mlflow_steps), dvclive=_tsv_steps(steps_tsv), epochs=[m.step for m in epochs])
                release.touch()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    capfd.readouterr()
    result = fit(params, run_name="live", storage_path=str(tmp_path / "ray"), data_dir=tiny_coco, root=tmp_path,
                 tracking=Tracking(sinks=[DvcLiveMetrics(tmp_path / "dvclive", epochs=1, stage_dir=tmp_path, env={})]),
                 hooks=[HoldAt(3, release, outcome)], check=None)
    watcher.join(timeout=10)
    console = "".join(capfd.readouterr())
    assert outcome.read_text() == "released", seen  # the rows arrived while step 4 waited
    assert seen == {"mlflow": [1, 2, 3], "dvclive": [1, 2, 3], "epochs": []}  # ... before the epoch's report
    # after the epoch: every step once (the epoch's report carried steps 1-4 again), the epoch recorded
    client = MlflowClient(uri)
    run_id = result.mlflow_run["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run_id, "epoch/loss")] == [1]
    assert _tsv_steps(steps_tsv) == [1, 2, 3, 4]
    assert {p.name for p in steps_tsv.parent.iterdir()} >= {"loss.tsv", "loss_cls.tsv", "lr.tsv", "images_per_s.tsv"}
    assert json.loads((tmp_path / "dvclive" / "metrics.json").read_text())["step"] == 1
    assert console_noise(console) == [], console  # the channel's actor went away quietly


def test_a_corrupt_image_is_skipped_counted_and_listed(tmp_path, tiny_coco, tiny_params, local_ray, corrupt_jpeg, capfd):
    from mlflow.tracking import MlflowClient

    from pipeline.data.errors import TooManyBadImagesError
    from pipeline.driver import Tracking, fit

    coco = json.loads((tiny_coco / "train.json").read_text())
    bad = corrupt_jpeg(tiny_coco / "images" / "train" / "bad.jpg")
    coco["images"][3]["file_name"] = "images/train/bad.jpg"
    (tiny_coco / "train.json").write_text(json.dumps(coco))
    common = dict(storage_path=str(tmp_path / "ray"), data_dir=tiny_coco, root=tmp_path, check=None)
    params = tiny_params("ray.num_workers=2", "train.epochs=2", "train.val_every=0", "data.max_bad_fraction=0.2")
    result = fit(params, run_name="bad", tracking=Tracking(reports_dir=tmp_path / "reports"), **common)
    assert [row["bad_images"] for row in result.history] == [1, 1]
    report = json.loads((tmp_path / "reports" / "bad_images.json").read_text())
    assert report["count"] == 1 and report["images"][0]["file"] == str(bad)
    assert "broken data stream" in report["images"][0]["error"]
    client = MlflowClient(result.mlflow_run["tracking_uri"])
    assert [m.value for m in client.get_metric_history(result.mlflow_run["run_id"], "epoch/bad_images")] == [1, 1]
    assert f"cannot decode {bad}" in "".join(capfd.readouterr())

    with pytest.raises(TooManyBadImagesError, match=r"1 of the 8 train images cannot be decoded") as err:
        fit(tiny_params("train.val_every=0"), run_name="too-many", tracking=Tracking(mlflow=False), **common)
    assert str(bad) in str(err.value)


def test_cluster_preflight_elastic_training_tracking_and_non_finite_loss(tmp_path, tiny_coco, tiny_params,
                                                                        monkeypatch):
    """A local cluster: a head node without CPUs (the driver's node) and two 1-CPU worker nodes.

    No worker can run on the driver's node, so rank 0 always runs on another node than the
    driver, while MLflow is the default ``sqlite:///<root>/mlflow.db``.
    """
    import threading

    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from pipeline.driver import NonFiniteLossError, PreflightError, fit, preflight
    from pipeline.driver.runner import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    # Ray turns 127.0.0.1 into this machine's address before connecting, which is not reachable
    # here; keep loopback, in this process and in the processes the cluster starts.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    # after a node died, Ray's view of the cluster lags (~20 s): a worker group sized from it waits
    # this long for resources that are gone before Ray Train retries with fewer workers (default 60 s)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "5")
    # one more copy of the data, "missing" on node B only (the preflight's data check is told so)
    only_on_a = tmp_path / "only-on-node-a"
    shutil.copytree(tiny_coco, only_on_a)
    # no dashboard: saves ~30 s of start-up on 2 busy cores (only the PG cleaner's backstop uses it);
    # a killed node is declared dead after ~3 s of failed health checks (default ~15 s); Ray's autoscaler
    # v2 reports in its public status that these nodes were started by hand (preflight: a fixed cluster)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                           "enable_autoscaler_v2": True}})
    node_a = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    node_b = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        ensure_ray(cluster.address)  # the ray.address path: connect to an existing cluster, ship the code
        cluster.wait_for_nodes()
        assert ray.get_runtime_context().get_node_id() == cluster.head_node.node_id
        debug = tmp_path / "debug"
        debug.mkdir()
        common = {"storage_path": str(tmp_path / "ray"), "root": tmp_path}

        # --- preflight: what can never succeed fails at once, naming what to change
        for overrides, message in ((["ray.num_workers=3"], r"ray.num_workers=3 .* at most 2 .*does not autoscale"),
                                   (["ray.use_gpu=true"], r"one worker needs 1 CPU, 1 GPU, more than any node")):
            with pytest.raises(PreflightError, match=message):
                fit(tiny_params(*overrides), run_name="too-big", data_dir=tiny_coco, **common)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # not importable in the check's tasks
        no_data_on_b = functools.partial(preflight, data_check=functools.partial(_data_missing_on, node_b.node_id))
        with pytest.raises(PreflightError) as err:
            fit(tiny_params(), run_name="data-on-one-node", data_dir=only_on_a, check=no_data_on_b, **common)
        message = str(err.value)
        assert f"node {node_b.node_id[:12]} (127.0.0.1): data_dir {only_on_a}: no such folder" in message
        assert node_a.node_id[:12] not in message and "1 of 2 node(s)" in message
        assert not (tmp_path / "ray" / "data-on-one-node").exists() and not read_records(debug)  # nothing started

        # --- elastic training, [1, 2] workers: one per worker node; node B is killed during epoch 2
        # (a worker hangs at its first step, so the kill lands mid-epoch) and the run finishes on node A
        # 8 images / (2 workers x 2): epoch 2 starts at global step 2
        hooks = [Record(debug), HangAt(2, marker=tmp_path / "hung")]
        params = tiny_params("ray.num_workers=[1,2]", "ray.max_failures=1", "train.epochs=3", "train.val_every=0",
                             "train.lr_scaling=linear", "train.reference_batch_size=4")
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the default store of root=tmp_path

        def kill_node_b_when_hung():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if (tmp_path / "hung").exists() and _logged_epochs(uri) >= 1:  # epoch 1 checkpointed and tracked
                    cluster.remove_node(node_b, allow_graceful=False)
                    return
                time.sleep(0.5)

        killer = threading.Thread(target=kill_node_b_when_hung, daemon=True)
        killer.start()
        result = fit(params, run_name="elastic", data_dir=tiny_coco, hooks=hooks, **common)
        killer.join(timeout=10)
        assert node_b not in cluster.worker_nodes, "node B was not killed"

        records = read_records(debug)
        starts = [r for rank in sorted(records) for r in records[rank] if r["event"] == "start"]
        first = [s for s in starts if s["world_size"] == 2]
        last = [s for s in starts if s["world_size"] == 1]
        assert {s["node_id"] for s in first} == {node_a.node_id, node_b.node_id}  # workers on both nodes
        assert cluster.head_node.node_id not in {s["node_id"] for s in starts}    # rank 0 not on the driver's
        assert len(last) == 1 and last[0]["node_id"] == node_a.node_id and last[0]["start_epoch"] == 1
        assert last[0]["base_lr"] == pytest.approx(first[0]["base_lr"] / 2)      # half the global batch
        assert all("runtime_resources" in s["code"] for s in starts), "workers did not run the shipped code"
        epochs = {r["event"]: r for r in records[0] if r["event"].startswith("epoch")}  # rank 0, latest per epoch
        assert [epochs[f"epoch{e}"]["world_size"] for e in range(3)] == [2, 1, 1]
        assert len(set(epochs["epoch1"]["image_ids"])) == 8  # alone after the restart: the whole epoch
        epoch0 = [set(next(r for r in records[rank] if r["event"] == "epoch0")["image_ids"]) for rank in (0, 1)]
        assert not epoch0[0] & epoch0[1] and len(epoch0[0] | epoch0[1]) == 8
        assert not any(r.get("mlflow_imported") for rank in records.values() for r in rank), "a worker used MLflow"
        assert result.summary["epochs"] == 3 and result.summary["world_size"] == 1
        assert [row["world_size"] for row in result.history] == [2, 1, 1]

        # driver-side tracking: one finished run in the default sqlite store, curves at step and epoch level
        client = MlflowClient(uri)
        run = client.get_run(result.mlflow_run["run_id"])
        assert run.info.status == "FINISHED" and result.mlflow_run["tracking_uri"] == uri
        assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "epoch/loss")}) == [1, 2, 3]
        assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "epoch/world_size"),
                                        key=lambda m: m.step)][-2:] == [1, 1]
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
        assert {1, 2} <= steps and max(steps) == result.history[-1]["global_step"]
        # system metrics, one stream per node named <ip>-<node id>: the driver's (the head, sampled by the
        # driver) and the workers' (sampled by each machine's local rank 0 and sent with the reports), node A's
        # continued across the restart. Ray Train counts local ranks per IP address, and these three "nodes"
        # share 127.0.0.1: in the first worker group only rank 0's node sampled (one machine, one stream)
        streams = _system_streams(client, run.info.run_id)
        rank0_first = next(s for s in records[0] if s["event"] == "start")["node_id"]
        expected = {cluster.head_node.node_id, rank0_first, node_a.node_id}
        assert sorted(name.rsplit("-", 1)[1] for name in streams) == sorted(n[:8] for n in expected), (
            streams, {k: n.node_id[:8] for k, n in {"head": cluster.head_node, "A": node_a, "B": node_b}.items()})
        assert all(steps == list(range(len(steps))) for steps in streams.values()), streams

        # --- a NaN loss names the step (node A only now)
        with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2 \(global step 2\).*total=nan"):
            fit(tiny_params("train.val_every=0"), run_name="nan", data_dir=tiny_coco, hooks=[PoisonAt(1)], **common)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _data_missing_on(node_id: str, manifest) -> list[str]:
    """The preflight's data check (run in a Ray task on each node), as if ``data_dir`` did not exist
    on the node ``node_id``: the nodes of a one-machine test cluster share one filesystem."""
    import ray

    from pipeline.driver.preflight import check_data_files

    if ray.get_runtime_context().get_node_id() == node_id:
        return [f"{manifest.data_dir}: no such folder"]
    return check_data_files(manifest)


def _logged_epochs(uri: str) -> int:
    """Epoch rows the driver has logged into the run of the store at ``uri`` (0 before it exists)."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        return max((len(client.get_metric_history(r.info.run_id, "epoch/loss")) for r in runs), default=0)
    except Exception:
        return 0

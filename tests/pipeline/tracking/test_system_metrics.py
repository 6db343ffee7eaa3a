"""System metrics per node (pipeline/tracking/system_metrics.py), compared with MLflow's own monitors."""

from __future__ import annotations

import sys
import time
import types

import pytest

from pipeline.tracking import progress, system_metrics
from pipeline.tracking.system_metrics import NODE_KEY, TIME_KEY, NodeSampler


def _mlflow_sample(monitors) -> dict[str, float]:
    out = {}
    for monitor in monitors:
        monitor.collect_metrics()
        out |= monitor.aggregate_metrics()
    return out


def test_names_and_values_are_mlflows():
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    reference = _mlflow_sample([CPUMonitor(), DiskMonitor(), NetworkMonitor()])
    ours = NodeSampler("n", 10.0).sample()
    assert set(ours) == set(reference)
    for key in ("system_memory_usage_megabytes", "disk_usage_megabytes", "disk_available_megabytes"):
        assert ours[key] == pytest.approx(reference[key], rel=0.05), key  # memory/disk move a little in between
    for key in ("system_memory_usage_percentage", "disk_usage_percentage"):
        assert ours[key] == pytest.approx(reference[key], abs=3.0), key
    assert 0.0 <= ours["cpu_utilization_percentage"] <= 100.0


class _FakeNvml(types.ModuleType):
    """Two GPUs with fixed readings; the second cannot report its power (as some boards cannot)."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__("pynvml")
        self.shutdowns = 0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=(h + 1) * 3_000_000_000, total=80_000_000_000)

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=40 + 50 * h)

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise self.NVMLError("not supported")
        return 350_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000


def test_gpu_metrics_are_mlflows(monkeypatch):
    from mlflow.system_metrics.metrics import gpu_monitor

    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(gpu_monitor, "pynvml", fake, raising=False)
    reference = _mlflow_sample([gpu_monitor.GPUMonitor()])
    sampler = NodeSampler("n", 10.0)
    ours = {k: v for k, v in sampler.sample().items() if k.startswith("gpu_")}
    assert ours == pytest.approx(reference)
    assert ours["gpu_0_power_usage_watts"] == 350.0 and "gpu_1_power_usage_watts" not in ours
    sampler.stop()
    assert fake.shutdowns == 1


def test_no_gpu_library_means_no_gpu_metrics(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert not any(k.startswith("gpu_") for k in NodeSampler("n", 10.0).sample())


def test_sampler_thread_drain_and_final_sample():
    sampler = NodeSampler("10.0.0.7-abcdef12", 0.05)
    assert [s[NODE_KEY] for s in sampler.drain()] == ["10.0.0.7-abcdef12"]  # the first drain always has one
    sampler.start()
    deadline = time.monotonic() + 60
    samples = []
    while len(samples) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        samples += sampler.drain()
    sampler.stop()
    assert len(samples) >= 3
    times = [s[TIME_KEY] for s in samples]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(set(s) - {NODE_KEY, TIME_KEY} >= {"cpu_utilization_percentage", "disk_usage_percentage"}
               for s in samples)

    published = []
    NodeSampler("n", 3600, publish=published.append).start().stop(final_sample=True)
    assert len(published) == 1 and len(published[0]) == 1  # a block shorter than the interval: one sample
    with pytest.raises(ValueError, match="must be > 0"):
        NodeSampler("n", 0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite MLflow store for the module (creating one takes seconds): ``(uri, client, experiment_id)``."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("e", artifact_location=(root / "a").as_uri())


def _run(store):
    uri, client, experiment = store
    return uri, client, client.create_run(experiment).info.run_id


def _samples(node, t0, n):
    return [{NODE_KEY: node, TIME_KEY: t0 + 10_000 * i, "cpu_utilization_percentage": 10.0 * i,
             "system_memory_usage_megabytes": 100.0} for i in range(n)]


def test_reports_carry_every_nodes_samples_to_mlflow(store):
    """Each node's local rank 0 adds its samples; the sink logs them as system/<node>/<name> at
    their sampling times, numbering each node's samples on from what the run already has."""
    import pickle

    uri, client, run_id = _run(store)
    row = {"epoch": 1, "loss": 1.0}
    rank0 = progress.epoch_metrics(row, [], system=_samples("a", 1_000_000, 2))   # node a, local rank 0
    rank1 = progress.epoch_metrics(row, None)                                     # node a, local rank 1
    rank2 = progress.epoch_metrics(row, None, system=_samples("b", 1_000_000, 3))  # node b, local rank 0
    sink = pickle.loads(pickle.dumps(progress.MlflowMetrics(uri, run_id)))
    callback = pickle.loads(pickle.dumps(progress.ProgressCallback([sink])))
    callback.after_report(None, [rank0, rank1, rank2], None)
    history = {n: client.get_metric_history(run_id, f"system/{n}/cpu_utilization_percentage") for n in "ab"}
    assert [(m.step, m.value, m.timestamp) for m in history["a"]] == [(0, 0.0, 1_000_000), (1, 10.0, 1_010_000)]
    assert [m.step for m in history["b"]] == [0, 1, 2]
    assert client.get_run(run_id).data.metrics["system/b/system_memory_usage_megabytes"] == 100.0

    # a resumed run (a new sink): node a's steps continue
    sink = progress.MlflowMetrics(uri, run_id)
    sink.on_epoch(progress.EpochReport.from_metrics(progress.epoch_metrics({"epoch": 2}, [], _samples("a", 2_000_000, 1))))
    assert [m.step for m in client.get_metric_history(run_id, "system/a/cpu_utilization_percentage")] == [0, 1, 2]


def test_tune_forwards_every_ranks_samples():
    """What a trial forwards to Tune (merge_system): rank 0's metrics with all samples, which the
    sweep's driver parses back."""
    rank0 = progress.epoch_metrics({"epoch": 1, "loss": 1.0}, [{"step": 1, "loss": 1.0}], system=_samples("a", 0, 1))
    rank1 = progress.epoch_metrics({"epoch": 1, "loss": 1.0}, None, system=_samples("b", 0, 2))
    merged = progress.merge_system([rank0, rank1])
    assert merged["loss"] == 1.0 and merged[progress.STEPS_KEY] == [{"step": 1, "loss": 1.0}]
    report = progress.EpochReport.from_metrics({**merged, "trial_id": "t", "training_iteration": 1})
    assert [s[NODE_KEY] for s in report.system] == ["a", "b", "b"] and "system" not in report.metrics
    assert len(rank0[progress.SYSTEM_KEY]) == 1  # the inputs are left as they were


def test_driver_monitor_logs_the_drivers_node(store, monkeypatch):
    uri, client, run_id = _run(store)
    monkeypatch.setattr(system_metrics, "this_node", lambda: ("10.0.0.1-0123abcd", "0123abcd" * 7))
    with system_metrics.driver_monitor(run_id, uri, 0.05) as node_id:
        assert node_id == "0123abcd" * 7
        deadline = time.monotonic() + 60
        while not client.get_metric_history(run_id, "system/10.0.0.1-0123abcd/cpu_utilization_percentage"):
            assert time.monotonic() < deadline, "no sample logged"
            time.sleep(0.05)
    steps = [m.step for m in client.get_metric_history(run_id, "system/10.0.0.1-0123abcd/cpu_utilization_percentage")]
    assert steps == list(range(len(steps)))


def test_worker_sampler_only_on_local_rank_zero_of_nodes_the_driver_does_not_sample(monkeypatch):
    monkeypatch.setattr(system_metrics, "this_node", lambda: ("10.0.0.2-feed0000", "feed0000" * 7))
    settings = system_metrics.SystemMetricsSettings(interval_s=3600, skip_node_id="0123abcd" * 7)
    assert system_metrics.worker_sampler(None, 0) is None
    assert system_metrics.worker_sampler(settings, 1) is None
    sampler = system_metrics.worker_sampler(settings, 0)
    assert sampler.node == "10.0.0.2-feed0000"
    sampler.stop()
    covered = system_metrics.SystemMetricsSettings(interval_s=3600, skip_node_id="feed0000" * 7)
    assert system_metrics.worker_sampler(covered, 0) is None
    assert system_metrics.node_name("10.1.2.3", "9f86d081884c7d659a2feaa0c55ad015") == "10.1.2.3-9f86d081"

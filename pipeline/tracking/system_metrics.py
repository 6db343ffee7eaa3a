"""System metrics of every node of a run, under MLflow's names, with no tracking access on the workers.

MLflow's "System metrics" tab shows the metrics named ``system/<node>/<name>``, which is what
MLflow's own ``SystemMetricsMonitor(node_id=...)`` logs: CPU utilisation, system memory, the
disk usage of ``/``, network traffic since sampling started and, per NVIDIA GPU, memory,
utilisation and power (through ``nvidia-ml-py``; nothing when the node has no GPU). One stream
per node of the run, ``<node>`` being :func:`node_name` (IP address and Ray node id), each sample
at its sampling time with the step counting the node's samples (0, 1, 2, ... as MLflow's
monitor does, continued when a run is resumed). The same :class:`NodeSampler` samples every node:

- **the driver's node**: in the driver process, logging each sample as it is taken
  (:func:`driver_monitor`);
- **every other node that runs a worker**: in the node's local rank 0 (:func:`worker_sampler`;
  Ray Train numbers local ranks per IP address, so one sampler per machine even where several
  Ray nodes share one); each sample goes through the run's live channel as it is taken
  (:mod:`pipeline.tracking.channel`), or, without one (a sweep's trial), rides on that worker's
  epoch report (:mod:`pipeline.tracking.progress`); the driver's side logs them
  (:class:`SampleSteps`), and the workers never touch the tracking store.

Workers on the driver's node take no samples of their own (the driver covers the node), unless
nothing on the driver's side samples it (a sweep's trials: the sweep's driver logs the trials'
reports into their runs, and its own node into the parent run).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.training.engine import HookBase
from pipeline.training.report import SYSTEM_KEY

__all__ = ["PREFIX", "NodeMetrics", "NodeSampler", "SampleSteps", "SystemMetricsSettings", "driver_monitor", "node_name",
           "run_monitor", "this_node", "worker_sampler"]

PREFIX = "system/"  # MLflow's namespace of system metrics (the UI's "System metrics" tab)
NODE_KEY, TIME_KEY = "node", "time"  # the two non-metric fields of a sample: stream name, unix time in ms

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SystemMetricsSettings:
    """What the workers of one run sample: every ``interval_s`` seconds, on every node but ``skip_node_id``."""

    interval_s: float = 10.0
    skip_node_id: str | None = None  # the driver's node when the driver samples it


def node_name(ip: str, node_id: str) -> str:
    """The stream name of a node: ``<ip>-<first 8 hex digits of the Ray node id>``.

    The IP is what people know a machine by (the Ray dashboard lists both); the id tells apart
    several Ray nodes on one machine.
    """
    return f"{ip}-{node_id[:8]}"


def this_node() -> tuple[str, str]:
    """``(node_name, ray_node_id)`` of the node this process runs on (Ray must be initialised)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return node_name(ray.util.get_node_ip_address(), node_id), node_id


class NodeSampler:
    """Samples this node's system metrics every ``interval_s`` seconds in a daemon thread.

    Metric names and units are those of MLflow 3's ``CPUMonitor``, ``DiskMonitor``,
    ``NetworkMonitor`` and ``GPUMonitor`` (one sample per logging step, as with MLflow's default
    ``samples_before_logging=1``); the CPU utilisation is the average since the previous sample
    (or since the start). Samples are dicts ``{"node": name, "time": unix ms, <metric>: value}``:
    :meth:`drain` hands over those taken since its previous call (taking one first if none was
    ever taken, so a node's first report always carries one); ``publish`` (if given) also receives
    each one as it is taken, so the epoch report still carries a sample whose live copy was lost.
    """

    def __init__(self, node: str, interval_s: float = 10.0,
                 publish: Callable[[list[dict[str, Any]]], None] | None = None):
        import psutil

        if interval_s <= 0:
            raise ValueError(f"system metrics interval {interval_s} s must be > 0")
        self.node, self.interval_s, self.publish = node, float(interval_s), publish
        self._psutil = psutil
        self._nvml, self._gpus = _open_nvml()
        net = psutil.net_io_counters()
        self._net0 = (net.bytes_recv, net.bytes_sent) if net is not None else (0, 0)
        self._cpu0 = _cpu_busy_total(psutil.cpu_times())
        self._sampling = threading.Lock()  # one sample at a time (the CPU baseline moves)
        self._lock = threading.Lock()      # the list of samples
        self._samples: list[dict[str, Any]] = []
        self._taken = 0
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._final = False
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, float]:
        """One sample of this node, ``{metric name: value}`` (no ``system/`` prefix)."""
        ps = self._psutil
        with self._sampling:
            cpu = _cpu_busy_total(ps.cpu_times())
            busy, total = cpu[0] - self._cpu0[0], cpu[1] - self._cpu0[1]
            self._cpu0 = cpu
        memory = ps.virtual_memory()
        disk = ps.disk_usage(os.sep)
        out = {
            "cpu_utilization_percentage": min(100.0, max(0.0, 100.0 * busy / total)) if total > 0 else 0.0,
            "system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": memory.used / memory.total * 100,
            "disk_usage_percentage": disk.percent,
            "disk_usage_megabytes": disk.used / 1e6,
            "disk_available_megabytes": disk.free / 1e6,
        }
        net = ps.net_io_counters()
        if net is not None:
            out["network_receive_megabytes"] = (net.bytes_recv - self._net0[0]) / 1e6
            out["network_transmit_megabytes"] = (net.bytes_sent - self._net0[1]) / 1e6
        out |= _gpu_sample(self._nvml, self._gpus)
        return {k: round(float(v), 1) for k, v in out.items()}

    def start(self) -> NodeSampler:
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self._thread.start()
        return self

    def drain(self) -> list[dict[str, Any]]:
        """The samples taken since the last call (oldest first)."""
        if not self._taken:
            self._take()
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

    def stop(self, final_sample: bool = False) -> None:
        """Stop sampling; ``final_sample``: one more sample covering the time since the last one
        (if none was taken yet, or if that was at least a second ago), published (if publishing) and kept for
        :meth:`drain`."""
        self._final = final_sample
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 10)
            self._thread = None
        elif final_sample:
            self._take_final()
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()
        if self._final:
            self._take_final()

    def _take_final(self) -> None:
        if not self._taken or time.monotonic() - self._last >= 1.0:
            self._take()

    def _take(self) -> None:
        try:
            values = self.sample()
        except Exception:  # noqa: BLE001 - a metric that cannot be read must not stop the training
            return
        self._taken += 1
        self._last = time.monotonic()
        sample = {NODE_KEY: self.node, TIME_KEY: time.time() * 1000, **values}
        with self._lock:
            self._samples.append(sample)
        if self.publish is not None:
            self.publish([sample])


def _cpu_busy_total(times: Any) -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of ``psutil.cpu_times()`` as psutil's ``cpu_percent`` counts
    them: guest time is already in user time, idle and I/O wait are not busy."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def _open_nvml() -> tuple[Any, list[Any]]:
    """``(pynvml, device handles)``; ``(None, [])`` without ``nvidia-ml-py`` or without an NVIDIA GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001 - no library, no driver or no device: no GPU metrics
        return None, []


def _gpu_sample(nvml: Any, handles: list[Any]) -> dict[str, float]:
    """MLflow ``GPUMonitor``'s metrics of every GPU of the node (all of them, as NVML sees the
    node); a metric the device does not support is left out."""
    out: dict[str, float] = {}
    for i, handle in enumerate(handles):
        with contextlib.suppress(Exception):
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            out[f"gpu_{i}_memory_usage_percentage"] = memory.used / memory.total * 100
            out[f"gpu_{i}_memory_usage_megabytes"] = memory.used / 1e6
        with contextlib.suppress(Exception):
            out[f"gpu_{i}_utilization_percentage"] = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        with contextlib.suppress(Exception):
            power = nvml.nvmlDeviceGetPowerUsage(handle)  # milliwatts
            limit = nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
            out[f"gpu_{i}_power_usage_watts"] = power / 1000
            out[f"gpu_{i}_power_usage_percentage"] = power / limit * 100
    return out


def worker_sampler(settings: SystemMetricsSettings | None, local_rank: int,
                   publish: Callable[[list[dict[str, Any]]], None] | None = None) -> NodeSampler | None:
    """The started sampler of this worker's node if this worker is the node's local rank 0 and
    the driver does not sample the node; else None. ``publish``: see :class:`NodeSampler`."""
    if settings is None or local_rank != 0:
        return None
    name, node_id = this_node()
    if node_id == settings.skip_node_id:
        return None
    return NodeSampler(name, settings.interval_s, publish=publish).start()


class SampleSteps:
    """Turns samples into MLflow metrics ``system/<node>/<name>`` of one run, at their sampling
    times, numbering each node's samples 0, 1, 2, ... (continuing what the run already has of
    that node, as MLflow's monitor does with ``resume_logging``)."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def to_metrics(self, client: Any, run_id: str, samples: list[dict[str, Any]]) -> list[Any]:
        from mlflow.entities import Metric

        metrics = []
        for s in samples:
            node = str(s[NODE_KEY])
            if node not in self._next:
                history = client.get_metric_history(run_id, f"{PREFIX}{node}/cpu_utilization_percentage")
                self._next[node] = 1 + max((m.step for m in history), default=-1)
            step = self._next[node]
            self._next[node] += 1
            metrics += [Metric(f"{PREFIX}{node}/{k}", float(v), int(s[TIME_KEY]), step)
                        for k, v in s.items() if k not in (NODE_KEY, TIME_KEY)]
        return metrics


@contextlib.contextmanager
def driver_monitor(run_id: str, tracking_uri: str, interval_s: float) -> Iterator[str | None]:
    """Sample the driver's node into ``run_id`` while the block runs, each sample logged as it is
    taken, a last one at the end; yields the node's Ray id (its workers need not sample it), or
    None where the driver is not on a Ray node (nothing sampled).

    A failure to log is reported once (a warning) and does not stop the block.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    steps = SampleSteps()
    failed: list[str] = []

    def publish(samples: list[dict[str, Any]]) -> None:
        try:
            metrics = steps.to_metrics(client, run_id, samples)
            for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per call
                client.log_batch(run_id, metrics=metrics[i:i + 1000])
        except Exception as err:  # tracking trouble must not stop the training
            if not failed:
                logger.warning("system metrics of the driver's node could not be logged: %s: %s",
                               type(err).__name__, err)
            failed.append(str(err))

    try:
        name, node_id = this_node()
    except Exception:  # a driver outside the cluster (Ray Client): not a node of the run
        yield None
        return
    sampler = NodeSampler(name, interval_s, publish=publish).start()
    try:
        yield node_id
    finally:
        sampler.stop(final_sample=True)


def run_monitor(run: Mapping[str, str] | None, interval_s: float) -> contextlib.AbstractContextManager[str | None]:
    """:func:`driver_monitor` into ``run`` (``{"run_id", "tracking_uri", ...}``, as the training and
    sweep drivers hold their MLflow runs); nothing (yielding None) when ``run`` is None."""
    if run is None:
        return contextlib.nullcontext()
    return driver_monitor(run["run_id"], run["tracking_uri"], interval_s)


class NodeMetrics(HookBase):
    """A training hook the driver adds to every worker: the local rank 0 of each node that is sampled
    (:func:`worker_sampler`) samples it in the background, puts each sample into ``channel`` (a
    :class:`~pipeline.tracking.channel.LiveChannel`, if any) as it is taken, and adds the epoch's
    samples to the epoch's report: a sample whose live copy never reached the driver (sent or taken
    after the channel closed, a worker that died) still arrives with its epoch, and the driver's
    relay delivers each sample once. The sampler stops when training ends, however it ends."""

    def __init__(self, settings: SystemMetricsSettings, channel: Any = None):
        self.settings, self.channel = settings, channel
        self._sampler: NodeSampler | None = None

    def before_train(self) -> None:
        import ray.train

        publish = functools.partial(self.channel.put, SYSTEM_KEY) if self.channel is not None else None
        self._sampler = worker_sampler(self.settings, ray.train.get_context().get_local_rank(), publish=publish)

    def after_epoch(self) -> None:
        if self._sampler is not None:
            self.trainer.report[SYSTEM_KEY] = self._sampler.drain()

    def after_train(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None

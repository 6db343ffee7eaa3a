"""What the driver-side sinks of the epoch reports cost, and what a system-metrics sample costs.

Every epoch report is handled in Ray Train's controller, one sink after the other, while the
controller's loop waits (:mod:`pipeline.tracking.progress`); the workers' next report waits for it
at the latest. This measures, in one process, for ``--epochs`` epoch reports shaped like the
training loop's (``--rows`` progress rows, the epoch's loss terms, lr, throughput, AP every epoch,
one system-metrics sample of two nodes):

- ``mlflow``: :class:`~pipeline.tracking.progress.MlflowMetrics` into a sqlite store (the peer:
  what every training already paid before the live DVC metrics),
- ``dvclive``: :class:`~pipeline.tracking.live.DvcLiveMetrics` in a DVC repository (DVCLive's
  files for ``dvc exp show``), and its rewrite of the whole history (a resumed or restarted run),

the first report (clients made, DVCLive's ``Live`` set up; imports done beforehand, as the
controller's warm-up does) and the median of the others; and the median time of one
:class:`~pipeline.tracking.system_metrics.NodeSampler` sample against its default 10 s interval.

Usage::

    python benchmarks/bench_tracking.py [--epochs 50] [--rows 20] [--samples 20]

Prints the figures and the ratio of the DVCLive sink to the MLflow sink.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import tempfile
import time
from pathlib import Path


def report(epoch: int, rows: int, history: list | None = None):
    from pipeline.tracking import progress
    from pipeline.tracking.system_metrics import NODE_KEY, TIME_KEY

    row = {"epoch": epoch, "loss": 2.0 / epoch, "loss_box": 0.5 / epoch, "loss_cls": 1.0 / epoch,
           "loss_rpn_box": 0.1 / epoch, "loss_rpn_obj": 0.4 / epoch, "lr": 1e-3, "images_per_s": 20.0,
           "epoch_time_s": 60.0, "global_step": epoch * rows, "world_size": 2, "AP": 0.3, "AP50": 0.5, "AP75": 0.3}
    steps = [{"step": (epoch - 1) * rows + i, "loss": 1.0, "loss_cls": 0.5, "lr": 1e-3, "images_per_s": 20.0}
             for i in range(rows)]
    system = [{NODE_KEY: node, TIME_KEY: time.time() * 1000, "cpu_utilization_percentage": 50.0,
               "system_memory_usage_megabytes": 4000.0, "disk_usage_percentage": 60.0} for node in ("a", "b")]
    return progress.EpochReport.from_metrics(progress.epoch_metrics(row, steps, system=system, history=history)), row


def timed(sink, epochs: int, rows: int) -> tuple[float, float]:
    """(first report, median of the others) in seconds."""
    times, history = [], []
    for epoch in range(1, epochs + 1):
        rep, row = report(epoch, rows)
        history.append(row)
        if epoch == 1:
            rep.history = list(history)
        start = time.perf_counter()
        sink.on_epoch(rep)
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--rows", type=int, default=20, help="progress rows per epoch report")
    parser.add_argument("--samples", type=int, default=20, help="system-metrics samples timed")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for module in ("mlflow.tracking", "dvclive", "dvc.repo"):  # the controller imports them in the background
        importlib.import_module(module)
    from dvc.repo import Repo
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.live import DvcLiveMetrics
    from pipeline.tracking.progress import MlflowMetrics
    from pipeline.tracking.system_metrics import NodeSampler

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("bench", (root / "a").as_uri())).info.run_id
        repo = root / "repo"
        repo.mkdir()
        Repo.init(str(repo), no_scm=True).close()
        mlflow_first, mlflow_median = timed(MlflowMetrics(uri, run_id), args.epochs, args.rows)
        live = DvcLiveMetrics(repo / "dvclive", epochs=args.epochs + 1, stage_dir=repo, env={"DVC_ROOT": str(repo)})
        live_first, live_median = timed(live, args.epochs, args.rows)
        history = [report(e, args.rows)[1] for e in range(1, args.epochs + 1)]
        start = time.perf_counter()
        live.write(history, end=False)
        rewrite = time.perf_counter() - start

        sampler = NodeSampler("bench", 10.0)
        times = []
        for _ in range(args.samples):
            start = time.perf_counter()
            sampler.sample()
            times.append(time.perf_counter() - start)
        sampler.stop()
        sample = statistics.median(times)

    print(f"{args.epochs} epoch reports, {args.rows} progress rows each (load average {os.getloadavg()[0]:.1f})")
    print("| sink | first report | later reports (median) |")
    print("|---|---|---|")
    print(f"| MlflowMetrics (sqlite, peer) | {mlflow_first * 1000:.0f} ms | {mlflow_median * 1000:.1f} ms |")
    print(f"| DvcLiveMetrics | {live_first * 1000:.0f} ms | {live_median * 1000:.1f} ms |")
    print(f"DVCLive / MLflow per report: {live_median / mlflow_median:.2f}x; "
          f"rewrite of {args.epochs} epochs (a restart): {rewrite * 1000:.0f} ms")
    print(f"one system-metrics sample: {sample * 1000:.2f} ms = {sample / 10.0 * 100:.3f}% of the 10 s interval")


if __name__ == "__main__":
    main()

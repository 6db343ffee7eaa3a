"""What a ``ray.train.report`` costs, against the training step it would interrupt.

Every rank must call ``ray.train.report`` for each report (Ray Train V2 synchronises the
ranks on it, and each worker's report queue holds one report until the controller polls it,
every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` = 2 s by default). Reporting the progress rows every
``log_every`` steps instead of once per epoch would add one report per ``log_every`` steps.
This measures, in one Ray Train run with ``--workers`` CPU workers, for each ``--gaps`` value
(seconds of simulated training between two reports):

- ``report``: the median time rank 0 spends in ``ray.train.report(metrics)`` (no checkpoint),
  with ``--rows`` progress rows in the metrics, as the training loop reports them,
- ``allreduce``: the median time of the one all-reduce of the loss terms a training step does
  anyway (the cheapest collective of a step), as the peer.

Usage::

    python benchmarks/bench_train_report.py [--workers 2] [--reports 12] [--rows 20] [--gaps 0 2.5]

Prints both figures and their ratio per gap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def loop(config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist

    rank = ray.train.get_context().get_world_rank()
    rows = [{"step": i, "loss": 1.0, "loss_cls": 0.5, "loss_box": 0.2, "loss_rpn_obj": 0.2, "loss_rpn_box": 0.1,
             "lr": 1e-3, "images_per_s": 10.0} for i in range(config["rows"])]
    values = torch.zeros(5)
    index = 0
    for gap in config["gaps"]:
        reduce_s, report_s = [], []
        for _ in range(config["reports"]):
            time.sleep(gap)  # the training steps between two reports
            start = time.perf_counter()
            dist.all_reduce(values)
            reduce_s.append(time.perf_counter() - start)
            index += 1
            metrics = {"epoch": index, "loss": 1.0, **({"steps": rows} if rank == 0 else {})}
            start = time.perf_counter()
            ray.train.report(metrics)
            report_s.append(time.perf_counter() - start)
        if rank == 0:
            report, reduce = statistics.median(report_s[2:]), statistics.median(reduce_s[2:])
            print(f"gap {gap:g} s: report (rank 0, {config['rows']} rows) {report * 1e3:.1f} ms, "
                  f"allreduce of 5 floats (peer) {reduce * 1e3:.2f} ms, ratio {report / reduce:.0f}x "
                  f"(medians over {len(report_s) - 2})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reports", type=int, default=12)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--gaps", type=float, nargs="+", default=[0.0, 2.5])
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.driver.cluster import ensure_ray

    ensure_ray(None)
    with tempfile.TemporaryDirectory() as storage:
        TorchTrainer(loop, train_loop_config={"reports": args.reports, "rows": args.rows, "gaps": args.gaps},
                     scaling_config=ray.train.ScalingConfig(num_workers=args.workers),
                     torch_config=TorchConfig(backend="gloo"),
                     run_config=ray.train.RunConfig(name="bench-report", storage_path=storage)).fit()
    ray.shutdown()


if __name__ == "__main__":
    main()

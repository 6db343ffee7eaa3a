"""What sending progress rows live costs a worker, against the training step it follows.

With a live channel (``pipeline/tracking/channel.py``), rank 0's :class:`LiveSteps` hook puts each new
progress row at the end of its step; a put only queues it, and a daemon thread of the worker sends
what is queued in one actor call (whose result nobody waits for) at most once a second. This
measures, in one Ray Train run with one CPU worker training the default model (``params.yaml``'s
``model`` and ``train`` sections, ``train.batch_size`` random images of ``data.resize.max_size`` px
with 2-6 boxes) with ``log_every: 1`` (a row after every step, the most the training loop makes),
``--steps`` steps twice:

- ``LiveSteps``: the mean time per step that the training thread spends in ``LiveSteps.after_step``
  (queueing the step's row), against the step: the cost the issue bounds at 1% of a step;
- ``actor call``: the same rows sent by the actor call itself after every step, on the training
  thread (``LiveChannel.send``, what the sender thread does instead): median and 95th percentile;
- the peer, ``step``: the median time of ``Trainer.run_step`` (forward, backward, optimiser) in the
  same run;

while the Train controller drains the channel every second into a sink that only counts rows, as
in a tracked run. Prints the figures, the ratios, and how many rows arrived live.

Usage::

    python benchmarks/bench_live_steps.py [--steps 30] [--threads 2] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


class CountRows:
    """A sink that only counts the live rows, into a file the driver reads afterwards."""

    def __init__(self, path: str):
        self.path, self.rows = path, 0

    def on_steps(self, rows: list[dict]) -> None:
        self.rows += len(rows)
        Path(self.path).write_text(str(self.rows))

    def on_epoch(self, report) -> None:
        pass


def _batch(batch_size: int, size: int, num_classes: int, generator):
    import torch

    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, size, size, generator=generator))
        n = int(torch.randint(2, 7, (), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * size * 0.6
        wh = 16 + torch.rand(n, 2, generator=generator) * size * 0.3
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                        "labels": torch.randint(1, num_classes + 1, (n,), generator=generator)})
    return images, targets


def loop(config: dict) -> None:
    import logging

    import torch

    from detector import build_model
    from pipeline.params import load_params
    from pipeline.tracking.channel import LiveSteps
    from pipeline.training.engine import HookBase, Trainer
    from pipeline.training.hooks import EpochMetrics, StepLogger
    from pipeline.training.optim import build_optimizer, build_scheduler
    from pipeline.training.report import STEPS_KEY

    logging.getLogger("pipeline").setLevel(logging.WARNING)  # no progress line per step
    torch.set_num_threads(config["threads"])
    params = load_params(config["params"])
    steps, num_classes = config["steps"], 5
    torch.manual_seed(0)
    model = build_model(params.detector_config(num_classes)).train()
    optimizer = build_optimizer(model, params.train, params.train.lr)
    generator = torch.Generator().manual_seed(0)
    batches = [_batch(params.train.batch_size, params.data.resize.max_size, num_classes, generator)
               for _ in range(steps)]

    class Sampler:
        def set_epoch(self, epoch: int) -> None:
            pass

    step_s, hook_s = [], []

    class Timed(HookBase):
        """Times ``inner.after_step`` (registered after StepLogger, as the driver registers LiveSteps)."""

        def __init__(self, inner: HookBase):
            self.inner = inner

        def before_train(self) -> None:
            self.inner._trainer_ref = self._trainer_ref
            self.inner.before_train()

        def before_epoch(self) -> None:
            self.inner.before_epoch()

        def after_step(self) -> None:
            start = time.perf_counter()
            self.inner.after_step()
            hook_s.append(time.perf_counter() - start)

    class SendEveryStep(HookBase):
        def after_step(self) -> None:
            self.channel.send([(STEPS_KEY, self.trainer.report[STEPS_KEY][-1:])])

    def train(hook: HookBase, first_step: int) -> tuple[list[float], list[float]]:
        trainer = Trainer(model, optimizer, build_scheduler(optimizer, params.train, steps), batches,
                          sampler=Sampler(), epochs=1, seed=0, base_lr=params.train.lr)
        trainer.global_step = first_step  # rows of the second run follow the first's (one step, one row)
        run_step = trainer.run_step

        def timed_step(*batch):
            start = time.perf_counter()
            run_step(*batch)
            step_s.append(time.perf_counter() - start)

        trainer.run_step = timed_step
        trainer.register_hooks([EpochMetrics(), StepLogger(log_every=1), Timed(hook)])
        step_s.clear()
        hook_s.clear()
        trainer.train()
        return step_s[2:], hook_s[2:]  # the first two steps warm up

    send = SendEveryStep()
    send.channel = config["channel"]
    send_steps, send_s = train(send, first_step=0)
    live_steps, live_s = train(LiveSteps(config["channel"]), first_step=steps)
    step = statistics.median(send_steps + live_steps)
    call, p95 = statistics.median(send_s), statistics.quantiles(send_s, n=20)[-1]
    per_step = statistics.fmean(live_s)
    print(f"{len(send_steps)} + {len(live_steps)} steps (2 + 2 warm-up left out), batch {params.train.batch_size} x "
          f"{params.data.resize.max_size} px, {params.model['backbone']}, {config['threads']} threads, "
          f"load average {os.getloadavg()[0]:.1f}:\n"
          f"  training step (Trainer.run_step, the peer): median {step * 1e3:.0f} ms\n"
          f"  LiveSteps on the training thread: mean {per_step * 1e6:.1f} us per step = {per_step / step * 100:.4f}% "
          f"of a step\n"
          f"  the actor call (on the sender thread): median {call * 1e6:.0f} us, p95 {p95 * 1e6:.0f} us = "
          f"{call / step * 100:.3f}% of a step", flush=True)
    time.sleep(2.5)  # the controller drains every second: let it take the last rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the worker")
    parser.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.driver.cluster import ensure_ray
    from pipeline.tracking.channel import LiveChannel
    from pipeline.tracking.progress import ProgressCallback
    from pipeline.tracking.system_metrics import this_node

    ensure_ray(None)
    with tempfile.TemporaryDirectory() as tmp:
        counted = Path(tmp) / "rows"
        channel = LiveChannel.open(this_node()[1])
        try:
            TorchTrainer(loop, train_loop_config={"steps": args.steps, "threads": args.threads,
                                                  "params": str(Path(args.params).resolve()), "channel": channel},
                         scaling_config=ray.train.ScalingConfig(num_workers=1,
                                                                resources_per_worker={"CPU": args.threads}),
                         torch_config=TorchConfig(backend="gloo"),
                         run_config=ray.train.RunConfig(name="bench-live", storage_path=tmp, callbacks=[
                             ProgressCallback([CountRows(str(counted))], channel)])).fit()
        finally:
            channel.close()
        delivered = int(counted.read_text()) if counted.exists() else 0
    print(f"rows delivered live to the driver's side: {delivered} of {2 * args.steps}")
    ray.shutdown()


if __name__ == "__main__":
    main()

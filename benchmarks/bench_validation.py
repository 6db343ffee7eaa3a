"""Validation on every rank (each its shard, rank 0 scores) against rank 0 alone: time and metrics, same run.

Usage::

    python benchmarks/bench_validation.py [--images 200] [--size 256]

The default model of ``params.yaml`` (untrained), ``--images`` synthetic images (bench_inference's), 1 torch
thread per rank: :func:`pipeline.evaluation.evaluate_model` in this process, then in 2 gloo processes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import REPO, make_images  # noqa: E402


def _rank(val: str, params_path: str, rank: int, world: int, init_file: str, results) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, dataset = _model_and_data(val, params_path)
    torch.distributed.barrier()
    start = time.perf_counter()
    metrics = _evaluate(model, dataset)
    results.put((rank, time.perf_counter() - start, metrics))
    torch.distributed.destroy_process_group()


def _model_and_data(val: str, params_path: str):
    from detector import build_model
    from pipeline.params import load_params
    from pipeline.training.worker import eval_dataset

    params = load_params(params_path)
    dataset = eval_dataset(Path(val), params)
    torch.manual_seed(0)
    return build_model(params.detector_config(dataset.num_classes, dataset.class_names),
                       load_pretrained=False).eval(), dataset


def _evaluate(model, dataset):
    from pipeline.evaluation import evaluate_model

    metrics = evaluate_model(model, dataset, batch_size=8, score_threshold=0.0)
    return {k: v for k, v in metrics.items() if k.startswith("A")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        val = str(make_images(Path(tmp), args.images, args.size))
        params_path = str(REPO / "params.yaml")
        torch.set_num_threads(1)
        model, dataset = _model_and_data(val, params_path)
        start = time.perf_counter()
        alone = _evaluate(model, dataset)
        alone_s = time.perf_counter() - start
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        procs = [context.Process(target=_rank, args=(val, params_path, rank, 2, f"{tmp}/gloo", results))
                 for rank in range(2)]
        for proc in procs:
            proc.start()
        ranks = {rank: (seconds, metrics) for rank, seconds, metrics in (results.get() for _ in procs)}
        for proc in procs:
            proc.join()
    shards_s = max(seconds for seconds, _ in ranks.values())
    print(f"rank 0 alone: {alone_s:.1f} s; 2 ranks on shards: {shards_s:.1f} s (slowest rank, gather and scoring "
          f"included): {alone_s / shards_s:.2f}x faster")
    print(f"metrics identical: {ranks[0][1] == alone} ({json.dumps({k: alone[k] for k in ('AP', 'AP50')})})")


if __name__ == "__main__":
    main()

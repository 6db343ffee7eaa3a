"""Batch inference on Ray Data against the in-process path, and the driver's memory while ``predict`` streams.

Usage::

    python benchmarks/bench_inference.py evaluate [--images 2000] [--size 256]
    python benchmarks/bench_inference.py predict [--counts 2500 5000 10000] [--size 256]

``evaluate`` (``--device cuda --gpus-per-replica 0.5`` on a GPU machine: replicas sharing it): the default model of ``params.yaml`` (untrained: its speed is what counts) on ``--images``
synthetic images, through :func:`pipeline.evaluate.evaluate` three ways in the same run: in this process
(``evaluate.cluster: false``), on a local Ray with 1 replica, and with 2 replicas (``replicas: [2, 2]``).
Prints the wall time and images/s of each, the ratios (2 vs 1 replica; Ray at 1 replica vs in process),
and whether the metrics agree. ``predict``: ``python -m pipeline predict`` in a child process over the
first N of the images for each N of ``--counts``, printing the driver's peak RSS (``ru_maxrss`` of the
child) and the time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, size: int) -> Path:
    """``count`` synthetic ``size`` px PNGs in ``folder/images`` and their COCO json ``folder/val.json``."""
    from pipeline.data.synthetic import SyntheticConfig, draw_image

    config = SyntheticConfig(image_size=size)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for image_id in range(1, count + 1):
        pixels, objects = draw_image(np.random.default_rng([0, image_id]), config)
        name = f"images/{image_id:06d}.png"
        Image.fromarray(pixels).save(folder / name)
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for bbox, label in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": label, "bbox": bbox,
                         "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(config.class_names)]
    (folder / "val.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return folder / "val.json"


def bench_evaluate(args: argparse.Namespace) -> None:
    import ray
    import torch

    from detector import build_model
    from pipeline.driver.cluster import ensure_ray
    from pipeline.evaluate import evaluate
    from pipeline.params import load_params

    params = load_params(REPO / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        val = make_images(Path(tmp), args.images, args.size)
        names = [c["name"] for c in json.loads(val.read_text())["categories"]]
        torch.manual_seed(0)
        model = build_model(params.detector_config(len(names), names), load_pretrained=False).eval()
        torch.set_num_threads(1)  # as one replica's actor: one CPU each
        ensure_ray(None)
        base = dataclasses.replace(params.evaluate, num_pictures=0, device=args.device,
                                   gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica)
        model = model.to(args.device)
        runs = {"in process": dataclasses.replace(base, cluster=False),
                "Ray, 1 replica": dataclasses.replace(base, replicas=[1, 1]),
                "Ray, 2 replicas": dataclasses.replace(base, replicas=[2, 2])}
        runs = {name: settings for name, settings in runs.items() if name in args.runs}
        seconds, metrics = {}, {}
        for name, settings in runs.items():
            start = time.perf_counter()
            metrics[name], _ = evaluate(model if name == "in process" else model.cpu(), val, Path(tmp) / "out",
                                        settings, params.data.resize, device=args.device)
            seconds[name] = time.perf_counter() - start
            print(f"{name:16s} {seconds[name]:7.1f} s  {args.images / seconds[name]:6.2f} images/s (wall)", flush=True)
        ray.shutdown()
    if {"Ray, 1 replica", "Ray, 2 replicas"} <= set(runs):
        print(f"2 replicas vs 1: {seconds['Ray, 1 replica'] / seconds['Ray, 2 replicas']:.2f}x the images/s")
    if {"Ray, 1 replica", "in process"} <= set(runs):
        print(f"Ray at 1 replica vs in process: {seconds['Ray, 1 replica'] / seconds['in process']:.2f}x the time")
    keys = ("AP", "AP50", "AP75", "AR100", "AP_per_class")
    first = next(iter(runs))
    same = all(metrics[name][k] == metrics[first][k] for name in runs for k in keys)
    print(f"metrics identical across the runs: {same}")


def bench_predict(args: argparse.Namespace) -> None:
    from detector import build_model, save_checkpoint
    from pipeline.params import load_params

    params = load_params(REPO / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        val = make_images(root, max(args.counts), args.size)
        names = [c["name"] for c in json.loads(val.read_text())["categories"]]
        save_checkpoint(root / "model.pt", build_model(params.detector_config(len(names), names),
                                                       load_pretrained=False))
        paths = sorted((root / "images").iterdir())
        for count in args.counts:
            listing = root / f"list{count}.txt"
            listing.write_text("".join(f"{p}\n" for p in paths[:count]))
            code = ("import resource, sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
                    "print('peak_rss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(rc)")
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(root / "model.pt"),
                                   "--images", str(listing), "--out", str(root / f"out{count}"), "--draw", "0"],
                                  cwd=REPO, capture_output=True, text=True, check=False)
            took = time.perf_counter() - start
            peak = [line for line in done.stdout.splitlines() if line.startswith("peak_rss_mb")]
            lines = sum(1 for _ in (root / f"out{count}" / "predictions.jsonl").open())
            print(f"{count:6d} images: driver peak RSS {float(peak[0].split()[1]) if peak else float('nan'):7.1f} MB, "
                  f"{took:6.1f} s, {lines} lines, exit {done.returncode}", flush=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    ev = sub.add_parser("evaluate")
    ev.add_argument("--images", type=int, default=2000)
    ev.add_argument("--size", type=int, default=256)
    ev.add_argument("--device", default="cpu", help="cpu | cuda: in process, and in each replica")
    ev.add_argument("--gpus-per-replica", type=float, default=0.0, help="e.g. 0.5: two replicas share one GPU")
    ev.add_argument("--cpus-per-replica", type=float, default=0.75,
                    help="0.75: two replicas (1 torch thread each) leave 0.5 CPU for decoding on a 2-CPU machine")
    ev.add_argument("--runs", nargs="+", default=["in process", "Ray, 1 replica", "Ray, 2 replicas"])
    pr = sub.add_parser("predict")
    pr.add_argument("--counts", type=int, nargs="+", default=[2500, 5000, 10000])
    pr.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    bench_evaluate(args) if args.what == "evaluate" else bench_predict(args)


if __name__ == "__main__":
    main()

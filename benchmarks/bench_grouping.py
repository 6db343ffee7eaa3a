"""Training images/s and padded pixels on a mixed-size COCO set: aspect-ratio grouped vs ungrouped batches.

Usage::

    python benchmarks/bench_grouping.py [--images 64] [--batch 4] [--min-size 320] [--max-size 533]

Generates COCO-like photographs of mixed sizes (landscape 640x480 / 640x427 / 500x375, portrait
480x640 / 427x640, square 640x640; 3-10 boxes each), loads them through the training loader
(:func:`pipeline.training.loader.build_train_loader`, training transforms, ``data.resize`` =
``--min-size``/``--max-size``) with ``train.group_by_aspect_ratio`` true and false, and reports:

* the share of padded pixels when each batch is padded to one tensor (sides rounded up to the
  model's largest stride), over a whole epoch;
* training steps of the default model (``params.yaml``'s ``model`` section, from scratch, CPU,
  forward + backward + SGD step) over one whole epoch of each kind, steps alternating, as
  images/s (the first step of each kind excluded).

The padded-pixel share is what a single backbone call per batch pays; with a model that runs the
backbone once per distinct padded size the time difference is smaller (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZES = [(640, 480), (640, 427), (500, 375), (480, 640), (427, 640), (640, 640)]  # (w, h)
WEIGHTS = [0.35, 0.2, 0.05, 0.2, 0.1, 0.1]  # roughly COCO's mix of orientations


def make_set(folder: Path, num_images: int, seed: int = 0) -> Path:
    """A prepared-style ``train.json`` (category ids 1..3) and its JPEGs."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(num_images):
        w, h = SIZES[int(rng.choice(len(SIZES), p=WEIGHTS))]
        pixels = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR).save(folder / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"images/{i}.jpg", "width": w, "height": h})
        for _ in range(int(rng.integers(3, 11))):
            bw, bh = float(rng.uniform(16, w / 2)), float(rng.uniform(16, h / 2))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 4)),
                         "bbox": [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh],
                         "area": bw * bh, "iscrowd": 0})
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    path = folder / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def padded_share(batches: list[list[tuple[int, int]]], stride: int) -> float:
    """Share of zero pixels when each batch of ``(h, w)`` images is padded to its largest side, rounded up."""
    real = padded = 0
    for sizes in batches:
        H = -(-max(h for h, _ in sizes) // stride) * stride
        W = -(-max(w for _, w in sizes) // stride) * stride
        real += sum(h * w for h, w in sizes)
        padded += len(sizes) * H * W
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=533)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from detector import DetectorConfig, build_model
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.params import TrainParams
    from pipeline.training.loader import build_train_loader
    from pipeline.training.losses import training_targets

    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        print(f"load average before: {' '.join(f.read().split()[:3])}; torch threads {args.threads}")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        dataset = CocoDetectionDataset(make_set(Path(tmp), args.images), transforms=build_transforms(
            True, args.min_size, args.max_size))
        config = DetectorConfig.from_dict(params["model"], num_classes=dataset.num_classes)
        torch.manual_seed(0)
        model = build_model(config).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        stride = max(config.strides)
        cpu = torch.device("cpu")
        loaders, shares = {}, {}
        for grouped in (True, False):
            train = dataclasses.replace(TrainParams(), batch_size=args.batch, group_by_aspect_ratio=grouped,
                                        loader_workers=0)
            built = build_train_loader(dataset, train, rank=0, world=1, device=cpu)
            built.sampler.set_epoch(0)
            batches = [[(img.shape[1], img.shape[2]) for img in images] for images, _ in built.loader]
            shares[grouped] = padded_share(batches, stride)
            loaders[grouped] = built
            print(f"{'grouped  ' if grouped else 'ungrouped'}: {len(batches)} batches, padded pixels "
                  f"{shares[grouped]:.1%}  ({built.describe()})", flush=True)

        # one whole epoch of each kind (the same images), steps alternating so load changes hit both alike
        seconds, counts = {True: 0.0, False: 0.0}, {True: 0, False: 0}
        iters = {k: iter(v.loader) for k, v in loaders.items()}
        warm = {True: True, False: True}
        while iters:
            for grouped in list(iters):
                batch = next(iters[grouped], None)
                if batch is None:
                    del iters[grouped]
                    continue
                images, targets = batch
                start = time.perf_counter()
                losses = model(images, training_targets(targets))
                optimizer.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                optimizer.step()
                if warm[grouped]:  # the first step of each kind warms up caches
                    warm[grouped] = False
                    continue
                seconds[grouped] += time.perf_counter() - start
                counts[grouped] += len(images)
        rate = {k: counts[k] / seconds[k] for k in seconds}
        for grouped in (True, False):
            print(f"{'grouped  ' if grouped else 'ungrouped'}: {rate[grouped]:.2f} images/s "
                  f"({counts[grouped]} images after the first step, {seconds[grouped]:.1f} s)")
        print(f"grouped / ungrouped: {rate[True] / rate[False]:.2f}x images/s; "
              f"padded pixels {shares[True]:.1%} vs {shares[False]:.1%}")
    with open("/proc/loadavg") as f:
        print(f"load average after: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()

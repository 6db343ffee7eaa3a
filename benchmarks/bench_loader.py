"""Images/s of the training data loader (decode + resize + flip + jitter + collate).

Usage: ``python benchmarks/bench_loader.py [--annotations data/prepared/train.json] [--epochs 2]``
(run ``python -m pipeline prepare`` first). Measures DataLoader throughput with 0 and 2
worker processes; the first batch (worker start-up) is excluded.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from pipeline.data.dataset import CocoDetectionDataset, collate_detection
from pipeline.data.transforms import Augment, build_transforms


def images_per_second(dataset: CocoDetectionDataset, workers: int, batch_size: int, epochs: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=collate_detection, persistent_workers=workers > 0)
    count, start = 0, None
    for _ in range(epochs):
        for images, _ in loader:
            if start is None:  # exclude start-up
                start = time.perf_counter()
                continue
            count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", default="data/prepared/train.json")
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--max-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    dataset = CocoDetectionDataset(args.annotations, transforms=build_transforms(
        train=True, min_size=args.min_size, max_size=args.max_size, augment=Augment(photometric_prob=0.5)))
    print(f"{len(dataset)} images from {args.annotations}, torch threads {torch.get_num_threads()}")
    for workers in (0, 2):
        rate = images_per_second(dataset, workers, args.batch_size, args.epochs)
        print(f"num_workers={workers}: {rate:.0f} images/s")


if __name__ == "__main__":
    main()

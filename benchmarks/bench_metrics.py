"""COCO box metrics: the pipeline's ``coco_metrics`` (faster-coco-eval) against pycocotools, same run.

Usage::

    python benchmarks/bench_metrics.py [--images 5000] [--dets 100] [--classes 80] [--repeats 3]

A ground truth of ``--images`` 640 x 480 images (0-15 objects of all sizes, ~7 on average, some
crowd) and exactly ``--dets`` detections per image (noisy copies of the objects plus false
positives, random scores). Both sides do the whole job from the JSON file and the detection list:
load the ground truth, load the results, evaluate, accumulate, summarise, per-class AP; the
pipeline's side also builds the PR curves. Runs alternate; the median of ``--repeats`` is shown,
with the ratio and a check that the 12 summary numbers agree within 1e-4.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# imports torch (pipeline.evaluation): outside the timing
from pipeline.evaluation.metrics import STAT_NAMES, coco_metrics, pr_curves


def make_case(path: Path, num_images: int, dets_per_image: int, num_classes: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        objects = []
        for _ in range(int(rng.integers(0, 16))):
            side = float(np.exp(rng.uniform(np.log(6), np.log(400))))
            w, h = side * float(rng.uniform(0.4, 1.6)), side * float(rng.uniform(0.4, 1.6))
            box = [float(rng.uniform(0, 640 - min(w, 600))), float(rng.uniform(0, 480 - min(h, 440))), w, h]
            cat = int(rng.integers(1, num_classes + 1))
            objects.append((cat, box))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                         "area": w * h, "iscrowd": int(rng.uniform() < 0.02)})
        for k in range(dets_per_image):
            if k < len(objects):
                cat, (x, y, w, h) = objects[k]
                box = [x + float(rng.normal(0, w / 10)), y + float(rng.normal(0, h / 10)), w, h]
            else:
                cat, box = int(rng.integers(1, num_classes + 1)), [float(v) for v in rng.uniform(0, 400, 4) + 2]
            dets.append({"image_id": image_id, "category_id": cat, "bbox": [round(v, 2) for v in box],
                         "score": round(float(rng.uniform()), 5)})
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return dets


def pycocotools_metrics(gt_path: Path, dets: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]
    [float(precision[:, :, k][precision[:, :, k] > -1].mean()) for k in range(precision.shape[2])]  # per class
    return ev.stats.tolist()


def pipeline_metrics(gt_path: Path, dets: list[dict]) -> list[float]:
    metrics, ev = coco_metrics(gt_path, dets)
    pr_curves(ev)
    return [metrics[k] for k in STAT_NAMES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        print(f"load average before: {' '.join(f.read().split()[:3])}")
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = Path(tmp) / "gt.json"
        dets = make_case(gt_path, args.images, args.dets, args.classes)
        print(f"{args.images} images, {len(dets)} detections, {args.classes} classes")
        times: dict[str, list[float]] = {"pycocotools": [], "pipeline (faster-coco-eval)": []}
        stats = {}
        for _ in range(args.repeats):
            for name, fn in (("pycocotools", pycocotools_metrics), ("pipeline (faster-coco-eval)", pipeline_metrics)):
                start = time.perf_counter()
                stats[name] = fn(gt_path, dets)
                times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            print(f"{name}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
        ratio = statistics.median(times["pipeline (faster-coco-eval)"]) / statistics.median(times["pycocotools"])
        print(f"ratio pipeline / pycocotools: {ratio:.2f}x (target <= 0.4x: {'met' if ratio <= 0.4 else 'NOT met'})")
        diff = max(abs(a - b) for a, b in zip(stats["pycocotools"], stats["pipeline (faster-coco-eval)"]))
        print(f"largest difference of the 12 summary numbers: {diff:.2e}")
    with open("/proc/loadavg") as f:
        print(f"load average after: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()

"""Cost per image of the v2 training recipe against the hand-written transforms it replaced.

    python benchmarks/bench_transforms.py [DATA_DIR] [--images N] [--old-rev REV]

The hand-written module is read from git (``REV:pipeline/data/transforms.py``, default the commit before
the v2 recipe) and run on the same decoded PIL images of ``DATA_DIR/train.json`` (default ``data/prepared``)
with the same seed, one torch thread (as a CPU training worker). Prints ms per image for each pipeline and
the ratio of each to the old default (resize + flip).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def old_module(rev: str) -> types.ModuleType:
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:pipeline/data/transforms.py"],
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("old_transforms")
    exec(compile(source, f"{rev}:pipeline/data/transforms.py", "exec"), module.__dict__)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path("data/prepared"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--old-rev", default="70c2f4a", help="a commit with the hand-written transforms")
    args = parser.parse_args()
    from pipeline.data import transforms as new
    from pipeline.data.dataset import CocoDetectionDataset

    torch.set_num_threads(1)
    old = old_module(args.old_rev)
    ds = CocoDetectionDataset(args.data_dir / "train.json")
    items = []
    for i in range(min(args.images, len(ds))):
        with Image.open(ds.image_path(i)) as f:
            image = f.convert("RGB")
        boxes, labels, iscrowd = ds._targets[ds.image_ids[i]]
        size = (image.height, image.width)
        items.append((image, {"boxes": boxes, "labels": labels, "iscrowd": iscrowd, "image_id": i,
                              "orig_size": size, "size": size}))
    lo, hi = 256, 256
    pipes = {
        "old: resize + flip": old.build_transforms(True, lo, hi, 0.5, 0.0),
        "old: + colour jitter 0.2": old.build_transforms(True, lo, hi, 0.5, 0.2),
        "v2: resize + flip": new.build_transforms(True, lo, hi),
        "v2: + photometric 0.5": new.build_transforms(True, lo, hi, new.Augment(photometric_prob=0.5)),
        "v2: full recipe": new.build_transforms(True, lo, hi, new.Augment(
            scale_jitter=(0.75, 1.25), iou_crop_prob=0.3, zoom_out_prob=0.3, zoom_out_max=1.5, photometric_prob=0.5)),
    }
    times = {}
    for _ in range(2):  # the first pass warms up
        for name, pipe in pipes.items():
            torch.manual_seed(0)
            t0 = time.perf_counter()
            for image, target in items:
                pipe(image, target)
            times[name] = (time.perf_counter() - t0) / len(items) * 1e3
    base = times["old: resize + flip"]
    print(f"{len(items)} images of {args.data_dir / 'train.json'}, 1 torch thread")
    for name, ms in times.items():
        print(f"{name:26} {ms:7.2f} ms/image  {ms / base:5.1f}x the old default")
    return 0


if __name__ == "__main__":
    sys.exit(main())

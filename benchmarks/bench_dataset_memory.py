"""Memory of the training dataset in a training process and its loader workers, flat arrays vs Python objects.

Usage::

    python benchmarks/bench_dataset_memory.py [--images 118000] [--boxes-per-image 7.3] [--workers 4] [--batch 16]

Generates a COCO-shaped prepared JSON (``--images`` images, Poisson(``--boxes-per-image``) boxes
each, so some have none, 1% crowd boxes, 80 categories; no image files: the dataset's state is
what is measured) and, for each implementation, in a fresh Python process:

* builds the dataset and the training loader the way training does
  (:func:`pipeline.training.loader.build_train_loader`, aspect-ratio grouping, seeded items,
  ``--workers`` forked loader workers, persistent) over a subclass that skips the image decode;
* reads USS and PSS (``psutil.Process.memory_full_info``) of the process before and after building
  the dataset, and of the process and each loader worker after the first batch of the epoch and
  after the last one;
* times the build and the epoch through the loader.

A third process loads the file with each implementation and times the targets lookup of each
(targets/s, alternating rounds, best of ``--rounds``), so that both rates see the same machine load.

``old`` is the implementation before flat records (kept here as the peer): ``json.loads`` of the
whole file, a dict per image and three tensors per image. ``new`` is
:class:`pipeline.data.dataset.CocoDetectionDataset` (:class:`~pipeline.data.dataset.FlatRecords`).
``ijson`` only loads the same columns with ``ijson``'s C backend (three passes: images,
annotations, categories) instead of :mod:`pipeline.data.jsonstream`'s one pass, for the load time.

"Dataset state per process" is the training process's USS growth from building the dataset and,
for a loader worker, its whole USS at the end of the epoch (everything it copied or allocated:
an upper bound). Both implementations' targets are checked to be identical.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_STATE_MB = 150.0
_IMAGE = '{"id":%d,"file_name":"images/train/%012d.jpg","width":%d,"height":%d}'
_ANNOTATION = ('{"id":%d,"image_id":%d,"category_id":%d,"bbox":[%.2f,%.2f,%.2f,%.2f],"area":%.2f,'
               '"iscrowd":%d}')


def make_coco(path: Path, num_images: int, boxes_per_image: float, seed: int = 0) -> int:
    """Write a COCO-shaped prepared JSON to ``path``; returns the number of boxes."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(boxes_per_image, num_images)
    sizes = np.array([(640, 480), (480, 640), (640, 427), (500, 375)])[rng.integers(0, 4, num_images)]  # (I, 2)
    image = np.repeat(np.arange(num_images), counts)  # (B,) row of each box's image
    n = len(image)
    wh = sizes[image] * rng.uniform(0.02, 0.5, (n, 2))  # (B, 2)
    xy = (sizes[image] - wh) * rng.uniform(0, 1, (n, 2))
    labels = rng.integers(1, 81, n)
    crowd = rng.random(n) < 0.01
    with path.open("w") as f:
        f.write('{"info":{"description":"bench_dataset_memory"},"images":[')
        f.write(",".join(_IMAGE % (i + 1, i + 1, w, h) for i, (w, h) in enumerate(sizes.tolist())))
        f.write('],"annotations":[')
        rows = zip(range(1, n + 1), (image + 1).tolist(), labels.tolist(), xy.tolist(), wh.tolist(), crowd.tolist())
        f.write(",".join(_ANNOTATION % (k, i, c, x, y, w, h, w * h, z) for k, i, c, (x, y), (w, h), z in rows))
        f.write('],"categories":' + json.dumps([{"id": c, "name": f"class{c}"} for c in range(1, 81)]) + "}\n")
    return n


class OldDataset:
    """The dataset before flat records (the peer): the whole JSON as Python objects, tensors per image."""

    def __init__(self, annotations: Path) -> None:
        import torch

        coco = json.loads(Path(annotations).read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.class_names = [c["name"] for c in categories]
        self._images = {img["id"]: img for img in coco["images"]}
        self.image_ids = [img["id"] for img in coco["images"]]
        per_image: dict[int, list[dict]] = {i: [] for i in self.image_ids}
        for ann in coco["annotations"]:
            per_image[ann["image_id"]].append(ann)
        self._targets = {}
        for image_id, anns in per_image.items():
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            self._targets[image_id] = (torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1),
                                       torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                                       torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.image_ids)

    def aspect_ratio(self, index: int) -> float:
        img = self._images[self.image_ids[index]]
        return img["width"] / img["height"]

    def raw_target(self, index: int) -> dict:
        image_id = self.image_ids[index]
        boxes, labels, iscrowd = self._targets[image_id]
        return {"boxes": boxes.clone(), "labels": labels.clone(), "iscrowd": iscrowd.clone(), "image_id": image_id}


def _no_decode(cls: type) -> type:
    """``cls`` whose items are ``(None, target)``: the target lookup without the image file."""

    class NoDecode(cls):
        def __getitem__(self, index: int):
            return None, self.raw_target(index)

    return NoDecode


def _memory(pid: int) -> tuple[float, float]:
    """``(USS, PSS)`` of process ``pid`` in MB."""
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return info.uss / 2**20, info.pss / 2**20


def _tree(pids: list[int]) -> list[tuple[float, float]]:
    return [_memory(pid) for pid in pids]


def _checksum(dataset, count: int) -> float:
    total = 0.0
    for i in range(count):
        t = dataset.raw_target(i)
        total += float(t["boxes"].double().sum()) + 3 * float(t["labels"].sum()) + 7 * float(t["iscrowd"].sum())
        total += 11 * t["image_id"] * len(t["boxes"])
    return total


def _load_ijson(path: Path) -> float:
    """Seconds to read the columns with ijson's C backend, three passes (for the load-time row)."""
    import ijson

    from pipeline.data.dataset import _Columns

    class Value:
        def __init__(self, prefix: str):
            self.prefix = prefix

        def items(self):
            with path.open("rb") as f:
                yield from ijson.items(f, self.prefix + ".item", use_float=True)

        def value(self):
            with path.open("rb") as f:
                return next(ijson.items(f, self.prefix, use_float=True))

    start = time.perf_counter()
    columns = _Columns(path)
    for key in ("images", "annotations", "categories"):
        getattr(columns, key)(Value(key))
    columns.build()
    return time.perf_counter() - start


def measure(impl: str, path: Path, workers: int, batch: int) -> dict:
    """One implementation in this (fresh) process; see the module docstring."""
    import psutil
    import torch

    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.params import TrainParams
    from pipeline.training.loader import build_train_loader

    torch.set_num_threads(1)
    gc.collect()
    before = _memory(psutil.Process().pid)
    start = time.perf_counter()
    dataset = _no_decode(OldDataset if impl == "old" else CocoDetectionDataset)(path)
    load_s = time.perf_counter() - start
    gc.collect()
    built = _memory(psutil.Process().pid)
    checksum = _checksum(dataset, len(dataset))
    train = TrainParams(batch_size=batch, loader_workers=workers)
    loader = build_train_loader(dataset, train, rank=0, world=1, device=torch.device("cpu")).loader
    start = time.perf_counter()
    items, first, pids = 0, None, []
    for _, targets in loader:
        items += len(targets)
        if first is None:
            pids = [psutil.Process().pid] + [c.pid for c in psutil.Process().children(recursive=True)]
            first = _tree(pids)
    epoch_s = time.perf_counter() - start
    last = _tree(pids)
    del loader
    return {"impl": impl, "images": len(dataset), "load_s": load_s, "peak_rss_mb": _peak_rss_mb(),
            "before": before, "built": built, "start": first, "end": last, "checksum": checksum,
            "epoch_items": items, "epoch_s": epoch_s}


def compare(path: Path, rounds: int) -> dict:
    """Load times of the three readers and the targets lookup rates of old and new, in one process."""
    import torch

    from pipeline.data.dataset import CocoDetectionDataset

    torch.set_num_threads(1)
    load_s, datasets = {}, {}
    for impl, cls in (("old", OldDataset), ("new", CocoDetectionDataset)):
        start = time.perf_counter()
        datasets[impl] = cls(path)
        load_s[impl] = time.perf_counter() - start
    load_s["ijson"] = _load_ijson(path)
    best = {"old": 0.0, "new": 0.0}
    for _ in range(rounds):
        for impl, dataset in datasets.items():
            start = time.perf_counter()
            for i in range(len(dataset)):
                dataset.raw_target(i)
            best[impl] = max(best[impl], len(dataset) / (time.perf_counter() - start))
    return {"load_s": load_s, "lookup_per_s": best}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report(r: dict) -> dict:
    """Print one implementation's rows; return its headline figures."""
    main_state = r["built"][0] - r["before"][0]
    worker_end = [uss for uss, _ in r["end"][1:]]
    state = max([main_state, *worker_end])
    uss_start, uss_end = sum(u for u, _ in r["start"]), sum(u for u, _ in r["end"])
    pss_start, pss_end = sum(p for _, p in r["start"]), sum(p for _, p in r["end"])
    print(f"{r['impl']:>4}: load {r['load_s']:.1f} s (peak RSS {r['peak_rss_mb']:.0f} MB); training process "
          f"USS {r['before'][0]:.0f} -> {r['built'][0]:.0f} MB with the dataset (+{main_state:.0f} MB)")
    for k, ((u0, p0), (u1, p1)) in enumerate(zip(r["start"], r["end"])):
        name = "training process" if k == 0 else f"loader worker {k}"
        print(f"      {name:>16}: USS {u0:7.1f} -> {u1:7.1f} MB, PSS {p0:7.1f} -> {p1:7.1f} MB (epoch start -> end)")
    print(f"      tree of {len(r['end'])} processes: USS {uss_start:.0f} -> {uss_end:.0f} MB, "
          f"PSS {pss_start:.0f} -> {pss_end:.0f} MB; dataset state per process (max) {state:.0f} MB")
    print(f"      epoch through the loader {r['epoch_items'] / r['epoch_s']:.0f} images/s ({r['epoch_s']:.1f} s)")
    return {"state": state, "growth": uss_end - uss_start, "pss_end": pss_end,
            "epoch_ips": r["epoch_items"] / r["epoch_s"]}


def _child(impl: str, path: Path, args: argparse.Namespace) -> dict:
    """Run ``--measure impl`` in a fresh process; its last stdout line is the result."""
    cmd = [sys.executable, __file__, "--measure", impl, "--annotations", str(path), "--workers", str(args.workers),
           "--batch", str(args.batch), "--rounds", str(args.rounds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"{impl} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118_000)
    parser.add_argument("--boxes-per-image", type=float, default=7.3)
    parser.add_argument("--workers", type=int, default=4, help="loader workers")
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--rounds", type=int, default=3, help="targets lookup rounds per implementation")
    parser.add_argument("--measure", choices=["old", "new", "compare"], help=argparse.SUPPRESS)
    parser.add_argument("--annotations", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        result = (compare(args.annotations, args.rounds) if args.measure == "compare"
                  else measure(args.measure, args.annotations, args.workers, args.batch))
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.json"
        start = time.perf_counter()
        boxes = make_coco(path, args.images, args.boxes_per_image)
        print(f"{args.images} images, {boxes} boxes ({boxes / args.images:.2f} per image), "
              f"{path.stat().st_size / 2**20:.0f} MB of JSON, written in {time.perf_counter() - start:.1f} s; "
              f"{args.workers} loader workers, batches of {args.batch}")
        results = {impl: _child(impl, path, args) for impl in ("old", "new", "compare")}
    old, new = _report(results["old"]), _report(results["new"])
    loads, lookups = results["compare"]["load_s"], results["compare"]["lookup_per_s"]
    print(f"same process: load old {loads['old']:.1f} s, new {loads['new']:.1f} s (jsonstream, one pass), "
          f"ijson C backend {loads['ijson']:.1f} s (three passes); targets lookup old {lookups['old']:.0f} /s, "
          f"new {lookups['new']:.0f} /s (best of {args.rounds})")
    print(f"targets identical: {'yes' if results['old']['checksum'] == results['new']['checksum'] else 'NO'}")
    print(f"new / old: dataset state per process {new['state']:.0f} / {old['state']:.0f} MB "
          f"(target <= {TARGET_STATE_MB:.0f}: {'met' if new['state'] <= TARGET_STATE_MB else 'NOT met'}); "
          f"tree USS growth over the epoch {new['growth']:+.0f} / {old['growth']:+.0f} MB; "
          f"tree PSS at the end {new['pss_end']:.0f} / {old['pss_end']:.0f} MB")
    print(f"new / old: targets lookup {lookups['new'] / lookups['old']:.2f}x, "
          f"epoch images/s {new['epoch_ips'] / old['epoch_ips']:.2f}x, load {loads['new'] / loads['old']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

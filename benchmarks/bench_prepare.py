"""Wall time, peak memory and bytes written of ``python -m pipeline prepare`` on a generated COCO set.

Usage::

    python benchmarks/bench_prepare.py [--images 100000] [--baseline-images 10000] [--baseline-rev a6c834d]

Generates a COCO-style annotation file of ``--images`` images (mixed portrait and landscape
sizes, 1-15 boxes per image, ~8 on average, many small and elongated boxes, 80 categories,
no segmentation) whose files are hard links to a dozen real JPEGs of six sizes, and runs the
``prepare`` stage on it (COCO-like resize 800/1333, p2-p6 anchors) in a subprocess: wall time,
peak RSS of the stage's process and of its whole process tree (image-check workers included,
sampled every 50 ms), and what it wrote into ``data/prepared/``.

The same is measured for the code at ``--baseline-rev`` (the last commit before images were
referenced in place; it copies every image) on ``--baseline-images`` images, and for today's
code on that size too, so the two are compared at equal size in the same run. Everything
lives in a temporary folder that is deleted afterwards (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (1024, 768), (500, 375)]  # (w, h)
TARGET_WALL_S, TARGET_RSS_GB = 60.0, 1.0


def make_jpegs(folder: Path, copies: int = 2) -> list[tuple[Path, int, int]]:
    """``copies`` photo-like JPEGs of every size in :data:`SIZES` (ext4 allows 65000 links per file)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for k, (w, h) in enumerate(SIZES * copies):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        pixels = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], axis=-1) + rng.normal(0, 12, (h, w, 3))
        path = folder / f"pool{k}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        out.append((path, w, h))
    return out


def make_coco(root: Path, num_images: int, pool: list[tuple[Path, int, int]], seed: int = 0) -> Path:
    """``root/annotations.json`` + ``root/images/<i>.jpg`` (hard links into ``pool``)."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    choice = rng.integers(0, len(pool), num_images)
    ann_id = 1
    for i in range(num_images):
        src, w, h = pool[int(choice[i])]
        name = f"{i:012d}.jpg"
        os.link(src, images_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h, "license": 1,
                       "coco_url": f"http://images.example.org/{name}", "date_captured": "2013-11-14 17:02:52"})
        n = int(rng.integers(1, 16))
        side = np.exp(rng.uniform(np.log(6), np.log(min(w, h) * 0.9), n))  # log-uniform: many small boxes
        ratio = np.exp(rng.uniform(np.log(1 / 5), np.log(5), n))  # h/w, elongated ones included
        bw, bh = np.minimum(side / np.sqrt(ratio), w - 1), np.minimum(side * np.sqrt(ratio), h - 1)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        for k in range(n):
            box = [round(float(x[k]), 2), round(float(y[k]), 2), round(float(bw[k]), 2), round(float(bh[k]), 2)]
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                                "bbox": box, "area": round(box[2] * box[3] * 0.7, 2), "iscrowd": 0})
            ann_id += 1
    categories = [{"id": c, "name": f"class{c:02d}", "supercategory": "thing"} for c in range(1, 81)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"info": {"description": "generated"}, "images": images,
                                "annotations": annotations, "categories": categories}))
    return path


def write_params(workdir: Path, annotations: Path, base: str, resize: tuple[int, int] = (800, 1333)) -> Path:
    """``base`` (a params.yaml text) pointed at ``annotations``, with ``resize`` and COCO-like anchors."""
    params = yaml.safe_load(base)
    params["data"].update(source="coco", val_fraction=0.05)
    params["data"]["coco"] = {"train_annotations": str(annotations), "train_images": str(annotations.parent / "images"),
                              "val_annotations": None, "val_images": None}
    params["data"]["resize"] = {"min_size": resize[0], "max_size": resize[1]}
    params["model"]["fpn_levels"] = [2, 3, 4, 5, 6]
    params["model"]["anchors"] = {"scales": [8], "aspect_ratios": [0.5, 1.0, 2.0]}
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_prepare(workdir: Path, params: Path, pythonpath: Path | None = None) -> dict[str, float]:
    """Run the stage; wall s, peak RSS (GB) of the stage process and of its process tree, bytes written."""
    import psutil

    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "prepare", "--params", str(params)], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree_peak = [0]
    done = threading.Event()

    def sample() -> None:
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
                tree_peak[0] = max(tree_peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    output = proc.stdout.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"prepare failed:\n{output[-3000:]}")
    prepared = workdir / "data" / "prepared"
    files = [p for p in prepared.rglob("*") if p.is_file()]
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_gb": usage.ru_maxrss / 2**20, "tree_rss_gb": tree_peak[0] / 2**30,
            "written_mb": sum(p.stat().st_size for p in files) / 2**20, "files": len(files)}


def baseline_code(rev: str, dest: Path) -> Path:
    """The ``pipeline`` and ``detector`` packages of ``rev`` (git archive) in ``dest``."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "pipeline", "detector"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def measure(label: str, root: Path, annotations: Path, resize: tuple[int, int], rev: str | None = None
            ) -> dict[str, float]:
    """Run today's code, or the code of ``rev`` with that commit's params.yaml as the base."""
    workdir = root / f"run-{label}"
    workdir.mkdir()
    if rev is None:
        base, pythonpath = (REPO / "params.yaml").read_text(), None
    else:
        base = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:params.yaml"], check=True,
                              capture_output=True, text=True).stdout
        pythonpath = baseline_code(rev, root / f"code-{label}")
    result = run_prepare(workdir, write_params(workdir, annotations, base, resize), pythonpath)
    shutil.rmtree(workdir)  # the baseline's copies are big
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--baseline-images", type=int, default=10_000, help="0: skip the baseline")
    parser.add_argument("--baseline-rev", default="a6c834d",
                        help="commit of the old code path (copies images, decodes every image)")
    parser.add_argument("--resize", type=int, nargs=2, default=(800, 1333), metavar=("MIN", "MAX"),
                        help="data.resize for the anchor-fit report (default: COCO's 800 1333)")
    parser.add_argument("--workdir", default=None, help="where to generate (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=args.workdir))
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        print(f"load average before: {' '.join(load)}; {os.cpu_count()} CPUs")
        start = time.perf_counter()
        pool = make_jpegs(root / "pool")
        big = make_coco(root / "big", args.images, pool)
        print(f"generated {args.images} images ({big.stat().st_size / 2**20:.0f} MB annotations) "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        print(f"\ndata.resize {args.resize[0]}/{args.resize[1]}, anchors p2-p6 scale 8 ratios 0.5/1/2")
        print("| code, size | wall s | CPU s (stage process) | peak RSS GB (stage / with workers) "
              "| written to data/prepared | files |")
        print("|---|---|---|---|---|---|", flush=True)
        rows = []

        def row(label: str, r: dict[str, float]) -> None:
            rows.append((label, r))
            print(f"| {label} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rss_gb']:.2f} / {r['tree_rss_gb']:.2f} | "
                  f"{r['written_mb']:.0f} MB | {r['files']} |", flush=True)

        row(f"today, {args.images} images", measure("new-big", root, big, args.resize))
        if args.baseline_images:
            small = make_coco(root / "small", args.baseline_images, pool, seed=1)
            row(f"today, {args.baseline_images} images", measure("new-small", root, small, args.resize))
            row(f"{args.baseline_rev} (copies, decodes), {args.baseline_images} images",
                measure("old-small", root, small, args.resize, rev=args.baseline_rev))
        big_r = rows[0][1]
        print(f"\ntargets at {args.images} images: wall {big_r['wall_s']:.1f} s (<= {TARGET_WALL_S:.0f}: "
              f"{'met' if big_r['wall_s'] <= TARGET_WALL_S else 'NOT met'}), peak RSS {big_r['rss_gb']:.2f} GB "
              f"(<= {TARGET_RSS_GB}: {'met' if big_r['rss_gb'] <= TARGET_RSS_GB else 'NOT met'})")
        if args.baseline_images:
            new, old = rows[1][1], rows[2][1]
            print(f"at {args.baseline_images} images: today / {args.baseline_rev} wall {new['wall_s'] / old['wall_s']:.2f}x, "
                  f"peak RSS {new['rss_gb'] / old['rss_gb']:.2f}x; per 1000 images old {old['wall_s'] / args.baseline_images * 1000:.2f} s "
                  f"-> {old['wall_s'] / args.baseline_images * args.images:.0f} s extrapolated to {args.images}")
        with open("/proc/loadavg") as f:
            print(f"load average after: {' '.join(f.read().split()[:3])}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

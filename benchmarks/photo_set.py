"""A detection benchmark set built from real photographs that ship with installed packages.

    python benchmarks/photo_set.py OUT_DIR [--train N] [--val N] [--test N] [--seed S]

Photographs: scikit-learn's sample images (``china.jpg``: a temple, ``flower.jpg``) and matplotlib's
``grace_hopper.jpg`` (a portrait): real JPEG photos, available offline wherever the project's
dependencies are installed. Each class is one photograph; an object is a random crop of its
photograph (random position and scale, a random horizontal flip), resized to the object's box and
pasted onto a background, so every box is exact (no two objects overlap, nothing is occluded). A
background is a random crop of any of the photographs, turned by a multiple of 90 degrees, blurred and
dimmed (an out-of-focus scene the objects stand out from by texture, not by a drawn outline).

Image sizes are mixed (landscape 320x240 and 352x224, portrait 240x320, square 288x288); object
shapes are drawn from square, tall (h/w 2-3), wide (w/h 2-3), elongated (1:4-1:6 either way) and
small (12-24 px, near square) kinds, 2-8 objects per image. Written as JPEG (quality 90) plus one
COCO JSON per split (``train.json``, ``val.json``, ``test.json``: images/<split>/*.jpg, category ids
1..3), which ``python -m pipeline prepare`` reads with ``data.source: coco`` (README, "Real-photo
benchmark set"). Deterministic for a seed: the same seed and photographs give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

CLASSES = ("temple", "flower", "portrait")
IMAGE_SIZES = ((320, 240), (352, 224), (240, 320), (288, 288))  # (width, height)
KINDS = ("square", "tall", "wide", "elongated", "small")


def photo_paths() -> dict[str, Path]:
    """Class name -> the installed photograph it is cut from."""
    import matplotlib
    import sklearn.datasets

    sklearn_images = Path(sklearn.datasets.__file__).parent / "images"
    paths = {"temple": sklearn_images / "china.jpg", "flower": sklearn_images / "flower.jpg",
             "portrait": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"photo_set: photographs not found: {missing} (install scikit-learn and matplotlib)")
    return paths


@dataclass(frozen=True)
class SetSpec:
    """Sizes of the splits and the per-image object count."""

    train: int = 400
    val: int = 100
    test: int = 100
    min_objects: int = 2
    max_objects: int = 8
    seed: int = 0


def object_size(kind: str, rng: np.random.Generator, width: int, height: int) -> tuple[int, int]:
    """``(w, h)`` in pixels of an object of ``kind`` in a ``width x height`` image."""
    short = min(width, height)
    if kind == "small":
        side = int(rng.integers(12, 25))
        return side, max(10, int(side * rng.uniform(0.8, 1.25)))
    if kind == "square":
        side = int(rng.uniform(0.12, 0.4) * short)
        return side, side
    ratio = rng.uniform(2.0, 3.0) if kind in ("tall", "wide") else rng.uniform(4.0, 6.0)
    long_side = int(rng.uniform(0.3, 0.7) * short)
    thin = max(8, int(long_side / ratio))
    wide = kind == "wide" or (kind == "elongated" and rng.random() < 0.5)
    return (long_side, thin) if wide else (thin, long_side)


def _crop(photo: Image.Image, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A random crop of ``photo`` with aspect ratio ``w / h`` at a random scale, resized to ``(w, h)``."""
    pw, ph = photo.size
    scale = rng.uniform(0.3, 1.0) * min(pw / w, ph / h)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    patch = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BILINEAR)
    return patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else patch


def make_image(photos: list[Image.Image], rng: np.random.Generator, spec: SetSpec) -> tuple[Image.Image, list[dict]]:
    """One composite image and its annotations (``bbox`` xywh in pixels, ``category_id`` 1..C)."""
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    source = photos[int(rng.integers(len(photos)))].rotate(90 * int(rng.integers(4)), expand=True)
    background = _crop(source, width, height, rng).filter(ImageFilter.GaussianBlur(3))
    image = Image.eval(background, lambda v: int(v * 0.6))
    placed: list[tuple[int, int, int, int]] = []
    annotations = []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        label = int(rng.integers(len(photos)))
        w, h = object_size(KINDS[int(rng.integers(len(KINDS)))], rng, width, height)
        w, h = min(w, width - 2), min(h, height - 2)
        for _attempt in range(30):  # a free spot: no overlap keeps every box exact (no occlusion)
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            if all(x >= bx + bw or bx >= x + w or y >= by + bh or by >= y + h for bx, by, bw, bh in placed):
                break
        else:
            continue
        image.paste(_crop(photos[label], w, h, rng), (x, y))
        placed.append((x, y, w, h))
        annotations.append({"bbox": [x, y, w, h], "category_id": label + 1, "area": w * h, "iscrowd": 0})
    return image, annotations


def build(out: Path, spec: SetSpec) -> dict[str, Path]:
    """Write ``out/images/<split>/*.jpg`` and ``out/<split>.json`` for train, val and test; returns the JSON paths."""
    paths = photo_paths()
    photos = [Image.open(paths[name]).convert("RGB") for name in CLASSES]
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    written = {}
    for split_index, (split, count) in enumerate((("train", spec.train), ("val", spec.val), ("test", spec.test))):
        rng = np.random.default_rng([spec.seed, split_index])  # splits independent of each other's sizes
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, anns = make_image(photos, rng, spec)
            name = f"images/{split}/{split}_{i:05d}.jpg"
            image.save(out / name, quality=90)
            images.append({"id": i + 1, "file_name": name, "width": image.width, "height": image.height})
            annotations += [a | {"id": len(annotations) + k + 1, "image_id": i + 1} for k, a in enumerate(anns)]
        info = {"description": "photo_set.py: objects cut from real photographs onto photographic backgrounds",
                "seed": spec.seed, "photos": {n: hashlib.sha256(paths[n].read_bytes()).hexdigest()[:16] for n in CLASSES}}
        coco = {"info": info, "images": images, "annotations": annotations, "categories": categories}
        written[split] = out / f"{split}.json"
        written[split].write_text(json.dumps(coco))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (images/ and train/val/test.json)")
    parser.add_argument("--train", type=int, default=SetSpec.train)
    parser.add_argument("--val", type=int, default=SetSpec.val)
    parser.add_argument("--test", type=int, default=SetSpec.test)
    parser.add_argument("--seed", type=int, default=SetSpec.seed)
    args = parser.parse_args()
    written = build(args.out, SetSpec(train=args.train, val=args.val, test=args.test, seed=args.seed))
    for split, path in written.items():
        coco = json.loads(path.read_text())
        print(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} boxes -> {path}")
    print(f"prepare it: python -m pipeline prepare --set data.source=coco "
          f"--set data.coco.train_annotations={written['train']} --set data.coco.train_images={args.out} "
          f"--set data.coco.val_annotations={written['val']} --set data.coco.val_images={args.out} "
          f"--set data.coco.test_annotations={written['test']} --set data.coco.test_images={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

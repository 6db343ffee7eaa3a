"""Per-file cost of ``prepare``'s ``header`` check: the hand-written JPEG/PNG header walk (EXIF block
parsed by PIL) against PIL's own ``Image.open`` for everything, on the same files in the same run.

Usage::

    python benchmarks/bench_headers.py [--files 4000] [--repeat 3]

Writes ``--files`` small photos-like files (JPEG with and without an EXIF orientation, PNG) into a
temporary folder and times :func:`pipeline.data.validate.inspect_image` over all of them, once as
``prepare`` runs it and once with the hand parser switched off (every file through PIL: open, size,
EXIF orientation, the tail check). Prints microseconds per file for both and their ratio; the
extra seconds per 100,000 images are what switching to PIL would add to ``bench_prepare.py``'s
figure (on one process; ``prepare`` spreads the files over one process per CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import validate  # noqa: E402


def _files(folder: Path, count: int) -> list[tuple[str, int, int]]:
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "camera"
    sources = []
    for k, (w, h) in enumerate([(640, 480), (480, 640), (500, 375)]):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"src{k}.jpg", quality=85)
        Image.fromarray(pixels).save(folder / f"src{k}-exif.jpg", quality=85, exif=exif.tobytes())
        Image.fromarray(pixels[: h // 4, : w // 4]).save(folder / f"src{k}.png")
        sources += [(f"src{k}.jpg", w, h), (f"src{k}-exif.jpg", h, w), (f"src{k}.png", w // 4, h // 4)]
    items = []
    for i in range(count):  # hard links: the page cache holds them, as a warm crawl would be
        name, w, h = sources[i % len(sources)]
        link = folder / f"{i:06d}{Path(name).suffix}"
        link.hardlink_to(folder / name)
        items.append((str(link), w, h))
    return items


def _time(items: list[tuple[str, int, int]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for path, w, h in items:
            problem = validate.image_problem(path, w, h, "header")
            assert problem is None, problem
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        items = _files(Path(tmp), args.files)
        hand = _time(items, args.repeat)
        fast_header = validate._fast_header
        validate._fast_header = lambda f: None  # every file through PIL
        try:
            pil = _time(items, args.repeat)
        finally:
            validate._fast_header = fast_header
    print(f"{args.files} files (JPEG, JPEG with EXIF orientation 6, PNG), best of {args.repeat}:")
    print(f"  hand-written header walk: {hand:7.1f} us/file")
    print(f"  PIL Image.open:           {pil:7.1f} us/file  ({pil / hand:.2f}x; "
          f"+{(pil - hand) * 1e5 / 1e6:.1f} s per 100,000 images on one process)")


if __name__ == "__main__":
    main()

"""A synthetic detection dataset drawn with PIL, deterministic from a seed.

Five shape classes whose *shape* distinguishes them (colours are random): filled ellipse,
rectangle with a contrasting border, triangle (pointing up, down, left or right), plus-shaped
cross, and ring. Objects span ``min_object_size`` to ``max_object_size`` pixels with
width:height ratios from ``1:max_aspect_ratio`` to ``max_aspect_ratio:1`` (or, with
``tall_wide_only``, only 1:4..1:3 and 3:1..4:1), on noisy gradient backgrounds with
unlabeled clutter (thin lines, small blobs). Placements whose box would be more than half
covered by later objects are rejected, so every box stays meaningful.

Each image is drawn from its own ``numpy`` generator seeded by ``(seed, split, index)``:
the same seed gives byte-identical PNGs and annotations.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.records import BoxColumns, Images, Split

SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring")
MAX_COVERED = 0.5  # a box may be at most this fraction covered by later objects
_SPLIT_KEYS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticConfig:
    """What to draw; mirrors ``data.synthetic`` in params.yaml."""

    image_size: int = 256
    min_objects: int = 2
    max_objects: int = 6
    min_object_size: int = 12
    max_object_size: int = 128
    max_aspect_ratio: float = 4.0
    tall_wide_only: bool = False
    class_names: tuple[str, ...] = SHAPES


def generate_split(name: str, num_images: int, seed: int, config: SyntheticConfig,
                   first_image_id: int = 1, first_box_id: int = 1) -> Split:
    """Draw ``num_images`` images of split ``name`` as PNG bytes with their boxes."""
    unknown = [c for c in config.class_names if c not in SHAPES]
    if unknown or not config.class_names:
        raise ValueError(f"data.classes: synthetic classes must be a non-empty subset of {list(SHAPES)}, "
                         f"got {list(config.class_names)}")
    boxes = BoxColumns()
    pixels, file_names = [], []
    box_id = first_box_id
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_KEYS.get(name, 2), index])
        image, objects = draw_image(rng, config)
        for bbox, label in objects:
            boxes.add(box_id, index, bbox, label)
            box_id += 1
        pixels.append(_png_bytes(image))
        file_names.append(f"{first_image_id + index:06d}.png")
    ids = np.arange(first_image_id, first_image_id + num_images, dtype=np.int64)
    sizes = np.full(num_images, config.image_size, dtype=np.int64)
    images = Images(ids=ids, widths=sizes, heights=sizes.copy(), file_names=file_names, pixels=pixels,
                    wheres=[f"synthetic {name} image {i}" for i in ids.tolist()])
    return Split(name=name, class_names=list(config.class_names), images=images, boxes=boxes.build(),
                 source="synthetic")


def draw_image(rng: np.random.Generator, config: SyntheticConfig) -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    """One ``(S, S, 3)`` uint8 image and its objects as ``([x, y, w, h], label)``."""
    size = config.image_size
    background = _background(rng, size)
    bg_colour = background.reshape(-1, 3).mean(0)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    _clutter(rng, draw, size, config.min_object_size)

    placed: list[tuple[int, int, int, int]] = []  # x0, y0, w, h of accepted objects
    covered: list[np.ndarray] = []  # per accepted object: (h, w) bool, covered by later ones
    objects = []
    wanted = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(wanted * 10):
        if len(objects) == wanted:
            break
        w, h = _object_size(rng, config)
        x0 = int(rng.integers(0, size - w + 1))
        y0 = int(rng.integers(0, size - h + 1))
        new_cover = [_cover(mask, box, (x0, y0, w, h)) for mask, box in zip(covered, placed)]
        if any(c.mean() > MAX_COVERED for c in new_cover):
            continue
        covered = new_cover
        placed.append((x0, y0, w, h))
        covered.append(np.zeros((h, w), dtype=bool))
        label = int(rng.integers(len(config.class_names))) + 1
        _draw_shape(rng, draw, config.class_names[label - 1], x0, y0, w, h, bg_colour)
        objects.append(([float(x0), float(y0), float(w), float(h)], label))

    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 4.0  # sensor-like noise
    return np.clip(pixels, 0, 255).round().astype(np.uint8), objects


def _object_size(rng: np.random.Generator, config: SyntheticConfig) -> tuple[int, int]:
    """``(w, h)``: the aspect ratio log-uniform, then the longer side log-uniform within limits."""
    lo, hi = config.min_object_size, config.max_object_size
    if config.tall_wide_only:
        ratio = float(rng.uniform(3.0, 4.0))
    else:
        max_ratio = min(config.max_aspect_ratio, hi / lo)
        ratio = float(np.exp(rng.uniform(0.0, math.log(max_ratio))))
    longest_min = min(hi, max(lo * ratio, 2 * lo))  # fewer tiny objects: near-squares start at 2*lo
    longest = float(np.exp(rng.uniform(math.log(longest_min), math.log(hi))))
    long_side = int(round(longest))
    short_side = max(lo, min(long_side, int(round(longest / ratio))))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _cover(mask: np.ndarray, box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> np.ndarray:
    """``mask`` (covered pixels of ``box``) with the part under ``other`` added."""
    x0, y0, w, h = box
    ox, oy, ow, oh = other
    ix0, iy0 = max(x0, ox), max(y0, oy)
    ix1, iy1 = min(x0 + w, ox + ow), min(y0 + h, oy + oh)
    if ix1 <= ix0 or iy1 <= iy0:
        return mask
    mask = mask.copy()
    mask[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = True
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-contrast linear gradient with smooth blotches: texture without object-like edges."""
    base = rng.uniform(40, 215, size=3)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-9
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    gradient = (xs * direction[0] + ys * direction[1])[..., None] * rng.uniform(-40, 40, size=3)
    coarse = rng.normal(0.0, 12.0, size=(8, 8, 3)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
                          .resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) - 128
    return np.clip(base + gradient + blotches, 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, min_object_size: int) -> None:
    """Unlabeled distractors: thin lines and blobs smaller than the smallest object."""
    for _ in range(int(rng.integers(1, 5))):
        points = rng.uniform(0, size, size=4).tolist()
        draw.line(points, fill=_random_colour(rng), width=int(rng.integers(1, 3)))
    blob_max = max(2, min_object_size // 2 - 1)
    for _ in range(int(rng.integers(2, 9))):
        r = int(rng.integers(1, blob_max // 2 + 2))
        cx, cy = rng.uniform(0, size, size=2)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_random_colour(rng))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray) -> tuple[int, int, int]:
    """A random colour far enough (in RGB distance) from ``against`` to give crisp edges."""
    colour = rng.integers(0, 256, size=3)
    for _ in range(50):
        if np.linalg.norm(colour - against) >= 120:
            break
        colour = rng.integers(0, 256, size=3)
    else:
        colour = np.where(against > 127, 20, 235)
    return tuple(int(v) for v in colour)


def _draw_shape(rng: np.random.Generator, draw: ImageDraw.ImageDraw, shape: str,
                x0: int, y0: int, w: int, h: int, bg_colour: np.ndarray) -> None:
    """Draw ``shape`` exactly filling pixels ``x0..x0+w-1``, ``y0..y0+h-1``."""
    colour = _contrasting_colour(rng, bg_colour)
    x1, y1 = x0 + w - 1, y0 + h - 1  # PIL's boxes include their last pixel
    short = min(w, h)
    if shape == "ellipse":
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif shape == "rectangle":
        border = _contrasting_colour(rng, np.asarray(colour, dtype=np.float64))
        draw.rectangle([x0, y0, x1, y1], fill=colour, outline=border, width=max(2, round(short * 0.18)))
    elif shape == "triangle":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        points = {
            0: [(cx, y0), (x1, y1), (x0, y1)],  # up
            1: [(x0, y0), (x1, y0), (cx, y1)],  # down
            2: [(x0, cy), (x1, y0), (x1, y1)],  # left
            3: [(x0, y0), (x1, cy), (x0, y1)],  # right
        }[int(rng.integers(4))]
        draw.polygon(points, fill=colour)
    elif shape == "cross":
        tw, th = max(2, round(w * 0.3)), max(2, round(h * 0.3))
        cx0, cy0 = x0 + (w - tw) // 2, y0 + (h - th) // 2
        draw.rectangle([x0, cy0, x1, cy0 + th - 1], fill=colour)
        draw.rectangle([cx0, y0, cx0 + tw - 1, y1], fill=colour)
    elif shape == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=colour, width=max(2, round(short * 0.2)))
    else:
        raise ValueError(f"unknown synthetic shape {shape!r}")


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()

"""Pictures of detections: boxes with class and score, ground truth in another colour, and grids."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

PRED_COLOR = (230, 40, 40)  # predictions: red, captioned "class score"
GT_COLOR = (40, 200, 40)    # ground truth: green


def to_pil(image: Tensor) -> Image.Image:
    """A ``(3, H, W)`` float image in [0, 1] as an RGB PIL image."""
    array = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def annotate(image: Image.Image, predictions: Sequence[Mapping[str, Any]], class_names: Mapping[int, str],
             ground_truth: Sequence[Mapping[str, Any]] = (), scale: tuple[float, float] = (1.0, 1.0)
             ) -> Image.Image:
    """A copy of ``image`` with ground truth (green) and predictions (red, "class score") drawn.

    Args:
        predictions: COCO results (``bbox`` xywh, ``category_id``, ``score``).
        ground_truth: COCO annotations (``bbox`` xywh, ``category_id``).
        class_names: category id -> name.
        scale: ``(sx, sy)`` from the boxes' pixels to ``image``'s pixels.
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, min(out.size) // 25))
    width = max(2, min(out.size) // 150)
    for ann in ground_truth:
        draw.rectangle(_xyxy(ann["bbox"], scale), outline=GT_COLOR, width=width)
    for det in sorted(predictions, key=lambda d: d["score"]):  # best drawn last, on top
        box = _xyxy(det["bbox"], scale)
        draw.rectangle(box, outline=PRED_COLOR, width=width)
        caption = f"{class_names.get(det['category_id'], det['category_id'])} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), caption, font=font)
        dy = bottom - box[1] if box[1] - (bottom - top) >= 0 else 0  # above the box if it fits
        draw.rectangle((left, top - dy, right, bottom - dy), fill=PRED_COLOR)
        draw.text((box[0], box[1] - dy), caption, fill=(255, 255, 255), font=font)
    return out


def image_grid(images: Sequence[Image.Image], columns: int = 4, cell: int = 320) -> Image.Image:
    """Images fitted into ``cell``-pixel squares, ``columns`` per row, on a white background."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    grid = Image.new("RGB", (columns * cell, rows * cell), (255, 255, 255))
    for i, image in enumerate(images):
        thumb = image.copy()
        thumb.thumbnail((cell, cell))
        row, col = divmod(i, columns)
        grid.paste(thumb, (col * cell + (cell - thumb.width) // 2, row * cell + (cell - thumb.height) // 2))
    return grid


def _xyxy(bbox: Sequence[float], scale: tuple[float, float]) -> tuple[float, float, float, float]:
    x, y, w, h = bbox
    sx, sy = scale
    return (x * sx, y * sy, (x + w) * sx, (y + h) * sy)


def draw_examples(dataset: Any, detections: Sequence[Mapping[str, Any]], coco_gt: Any, class_names: Mapping[int, str],
                  num: int, min_score: float = 0.0, min_display_size: int = 256) -> list[tuple[int, Image.Image]]:
    """The first ``num`` images of ``dataset`` as the model saw them, with predictions and ground truth.

    ``detections`` and ``coco_gt``'s annotations are in original pixels; they are scaled to each
    item's image tensor (upscaled to ``min_display_size`` if smaller). Predictions below ``min_score``
    are not drawn. Returns ``(image_id, picture)``.
    """
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for det in detections:
        if det["score"] >= min_score:
            by_image.setdefault(det["image_id"], []).append(det)
    out = []
    for i in range(min(num, len(dataset))):
        image, target = dataset[i]
        image_id = int(target["image_id"])
        orig_h, orig_w = (int(v) for v in target["orig_size"])
        picture = to_pil(image)
        if max(picture.size) < min_display_size:  # upscale tiny images so captions stay legible
            zoom = min_display_size / max(picture.size)
            picture = picture.resize((round(picture.width * zoom), round(picture.height * zoom)))
        scale = (picture.width / orig_w, picture.height / orig_h)
        gt = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        out.append((image_id, annotate(picture, by_image.get(image_id, []), class_names, gt, scale)))
    return out

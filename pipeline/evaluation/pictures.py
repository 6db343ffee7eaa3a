"""Pictures of detections: ground truth and predictions told apart, captions that never overlap, a legend.

A picture is the image with predictions (red, solid, captioned "class score", above the box when
there is room) and ground-truth boxes (green, dashed; captioned with the class, below the box, only
when no prediction drawn finds it: same class at IoU >= 0.5), and under it a legend strip: what each
style means, the score threshold of the predictions drawn, and how many captions were left out for
want of a free spot near their box (boxes are always drawn). A caption set apart from its box is
joined to it by a thin line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # predict's overlays are drawn by a driver that does not import torch
    from torch import Tensor

PRED_COLOR = (230, 40, 40)  # predictions: red, solid, captioned "class score"
GT_COLOR = (40, 200, 40)    # ground truth: green, dashed, captioned "class"
PRED_TEXT, GT_TEXT = (255, 255, 255), (0, 0, 0)
LEGEND_BACKGROUND, LEGEND_TEXT = (255, 255, 255), (20, 20, 20)

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def to_pil(image: Tensor) -> Image.Image:
    """A ``(3, H, W)`` float image in [0, 1] as an RGB PIL image."""
    array = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def annotate(image: Image.Image, predictions: Sequence[Mapping[str, Any]], class_names: Mapping[int, str],
             ground_truth: Sequence[Mapping[str, Any]] = (), scale: tuple[float, float] = (1.0, 1.0),
             score_threshold: float | None = None) -> Image.Image:
    """``image`` with ground truth and predictions drawn, and a legend strip below it.

    Args:
        predictions: COCO results (``bbox`` xywh, ``category_id``, ``score``).
        ground_truth: COCO annotations (``bbox`` xywh, ``category_id``).
        class_names: category id -> name.
        scale: ``(sx, sy)`` from the boxes' pixels to ``image``'s pixels.
        score_threshold: the lowest score of the predictions given (stated in the legend).

    Returns:
        A new image, ``image``'s width and its height plus the legend's.
    """
    picture = image.convert("RGB")  # a copy
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(11, min(28, round(min(picture.size) / 28))))
    width = max(2, round(min(picture.size) / 200))
    preds = sorted(predictions, key=lambda d: -d["score"])  # best first: they get the free spots
    gt_boxes = [_xyxy(ann["bbox"], scale) for ann in ground_truth]
    pred_boxes = [_xyxy(det["bbox"], scale) for det in preds]
    for box in gt_boxes:
        _dashed_rectangle(draw, box, GT_COLOR, width)
    for box in reversed(pred_boxes):  # best drawn last, on top
        draw.rectangle(box, outline=PRED_COLOR, width=width)

    captions = [(box, f"{_name(class_names, det['category_id'])} {det['score']:.2f}", PRED_COLOR, PRED_TEXT, True)
                for box, det in zip(pred_boxes, preds)]
    captions += [(box, _name(class_names, ann["category_id"]), GT_COLOR, GT_TEXT, False)
                 for box, ann in zip(gt_boxes, ground_truth) if not _found(box, ann["category_id"], pred_boxes, preds)]
    offsets, requests = [], []
    for box, text, _, _, above in captions:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        offsets.append((left, top))
        requests.append((box, (right - left + 4, bottom - top + 4), above))
    spots = place_captions(requests, picture.size)
    for (box, text, fill, ink, _), (left, top), spot in zip(captions, offsets, spots):
        if spot is not None:
            _leader(draw, spot, box, fill)
            draw.rectangle(spot, fill=fill)
            draw.text((spot[0] + 2 - left, spot[1] + 2 - top), text, fill=ink, font=font)
    return _with_legend(picture, font, width, score_threshold, hidden=spots.count(None))


def place_captions(requests: Sequence[tuple[Rect, tuple[float, float], bool]], image_size: tuple[int, int]
                   ) -> list[Rect | None]:
    """Spots for captions, in order, none overlapping another and all inside the image.

    Args:
        requests: ``(box, (width, height), above)`` per caption: the box it belongs to (xyxy), its
            size, and whether it prefers the space above the box (else below).
        image_size: ``(W, H)``.

    Returns:
        Per request its rectangle (xyxy), or None where no spot near its box is free.
    """
    placed: list[Rect] = []
    spots: list[Rect | None] = []
    for box, size, above in requests:
        spot = _free_spot(box, size, image_size, placed, above)
        if spot is not None:
            placed.append(spot)
        spots.append(spot)
    return spots


def _found(box: Rect, category_id: int, pred_boxes: Sequence[Rect], preds: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a prediction of ``category_id`` overlaps ``box`` at IoU >= 0.5."""
    return any(det["category_id"] == category_id and _iou(box, other) >= 0.5 for other, det in zip(pred_boxes, preds))


def _iou(a: Rect, b: Rect) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _leader(draw: ImageDraw.ImageDraw, spot: Rect, box: Rect, color: tuple[int, int, int]) -> None:
    """A thin line from a caption placed away from its box to the box's nearest edge."""
    x = min(max((spot[0] + spot[2]) / 2, box[0]), box[2])
    if spot[3] < box[1]:  # above the box
        draw.line(((x, spot[3]), (x, box[1])), fill=color, width=1)
    elif spot[1] > box[3]:  # below
        draw.line(((x, spot[1]), (x, box[3])), fill=color, width=1)


def _name(class_names: Mapping[int, str], category_id: int) -> str:
    return str(class_names.get(category_id, category_id))


def _free_spot(box: Rect, size: tuple[float, float], image_size: tuple[int, int], placed: Sequence[Rect],
               above: bool) -> Rect | None:
    """The first candidate spot for a ``size`` caption of ``box`` that lies in the image and overlaps
    no caption in ``placed``; None if there is none. Predictions (``above``) try above the box first,
    ground truth below it, then inside on that side, the other side, and a few caption heights further out."""
    w, h = size
    x0, y0, x1, y1 = box
    # outside on its own side, inside on that side, then the other side (outside, inside)
    tops = [y0 - h, y0, y1, y1 - h] if above else [y1, y1 - h, y0 - h, y0]
    tops += [t for k in (1, 2, 3) for t in ((y0 - h - k * h, y1 + k * h) if above else (y1 + k * h, y0 - h - k * h))]
    W, H = image_size
    for top in tops:
        for left in (x0, x1 - w):
            left = min(max(left, 0), W - w)  # slide into the image sideways
            spot = (left, top, left + w, top + h)
            if top >= 0 and top + h <= H and not any(_overlap(spot, other) for other in placed):
                return spot
    return None


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Rect, color: tuple[int, int, int], width: int) -> None:
    x0, y0, x1, y1 = box
    for start, end in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        for a, b in _dashes(start, end, dash=3 * width + 3, gap=2 * width + 1):
            draw.line((a, b), fill=color, width=width)


def _dashes(start: tuple[float, float], end: tuple[float, float], dash: float, gap: float
            ) -> Iterator[tuple[tuple[float, float], tuple[float, float]]]:
    (xa, ya), (xb, yb) = start, end
    length = math.hypot(xb - xa, yb - ya)
    position = 0.0
    while position < length:
        stop = min(position + dash, length)
        yield ((xa + (xb - xa) * position / length, ya + (yb - ya) * position / length),
               (xa + (xb - xa) * stop / length, ya + (yb - ya) * stop / length))
        position = stop + gap


def _with_legend(picture: Image.Image, font: Any, width: int, score_threshold: float | None,
                 hidden: int) -> Image.Image:
    """``picture`` above a white strip: the two box styles, the threshold, the hidden-caption count."""
    probe = ImageDraw.Draw(picture)
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 6
    swatch = 3 * line_h // 2
    items: list[tuple[tuple[int, int, int] | None, bool, str]] = [
        (PRED_COLOR, False, "prediction: class score"), (GT_COLOR, True, "ground truth (named if missed)")]
    if score_threshold is not None:
        items.append((None, False, f"score >= {score_threshold:.2f}"))
    if hidden:
        items.append((None, False, f"{hidden} caption{'s' * (hidden != 1)} hidden (no free spot)"))
    # lay the items out left to right, wrapping to new lines
    rows: list[list[tuple[int, Any]]] = [[]]
    x = pad = max(4, line_h // 4)
    for item in items:
        item_w = (swatch + pad if item[0] else 0) + probe.textlength(item[2], font=font) + 2 * pad
        if x + item_w > picture.width and rows[-1]:
            rows.append([])
            x = pad
        rows[-1].append((x, item))
        x += item_w
    out = Image.new("RGB", (picture.width, picture.height + len(rows) * line_h + pad), LEGEND_BACKGROUND)
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        y = picture.height + pad // 2 + r * line_h
        for x, (color, dashed, text) in row:
            if color is not None:
                mid = y + line_h // 2
                if dashed:
                    _dashed_rectangle(draw, (x, mid - line_h // 4, x + swatch, mid + line_h // 4), color, width)
                else:
                    draw.rectangle((x, mid - line_h // 4, x + swatch, mid + line_h // 4), outline=color, width=width)
                x += swatch + pad
            draw.text((x, y + 3), text, fill=LEGEND_TEXT, font=font)
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
    are not drawn. Items whose file could not be decoded (image None) are passed over. Returns
    ``(image_id, picture)``.
    """
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for det in detections:
        if det["score"] >= min_score:
            by_image.setdefault(det["image_id"], []).append(det)
    out = []
    for i in range(min(num, len(dataset))):
        image, target = dataset[i]
        if image is None:
            continue
        image_id = int(target["image_id"])
        orig_h, orig_w = (int(v) for v in target["orig_size"])
        picture = to_pil(image)
        if max(picture.size) < min_display_size:  # upscale tiny images so captions stay legible
            zoom = min_display_size / max(picture.size)
            picture = picture.resize((round(picture.width * zoom), round(picture.height * zoom)))
        scale = (picture.width / orig_w, picture.height / orig_h)
        gt = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        out.append((image_id, annotate(picture, by_image.get(image_id, []), class_names, gt, scale,
                                       score_threshold=min_score)))
    return out

"""Detections for image files in this process (``evaluate.cluster: false``), streamed like the cluster's.

Yields the rows :func:`pipeline.evaluation.batch_inference.stream_detections` yields, and fills the same
:class:`~pipeline.evaluation.batch_inference.StreamStats`, so ``predict`` writes either the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from pipeline.data.decode import decode_or_none
from pipeline.evaluation.batch_inference import StreamStats, check_bad_fraction, check_policy, record_skipped
from pipeline.evaluation.inference import to_coco_results
from pipeline.inference.detection import detect


def local_detections(items: Sequence[dict[str, Any]], model: nn.Module, *, transforms: Callable,
                     score_threshold: float, batch_size: int, device: str | torch.device, stats: StreamStats,
                     bad_images: str = "skip", max_bad_fraction: float = 0.001, exif_orientation: str = "apply",
                     progress: bool = False) -> Iterator[dict[str, Any]]:
    """Rows ``{"id", "path", "height", "width", "detections"}`` for the readable ``{"id", "path"}`` items.

    Args:
        transforms: ``(image, target) -> (tensor (3, h, w), target)``, the evaluation transforms.
    """
    from tqdm import tqdm

    check_policy(bad_images, max_bad_fraction)
    model.eval()
    with tqdm(total=len(items), desc="predict", unit="img", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for batch in _readable_batches(items, batch_size, stats, bad_images, exif_orientation):
            start = time.perf_counter()
            outputs = detect(model, [image for _, image in batch], transforms=transforms, device=device)
            stats.forward_s += time.perf_counter() - start
            for (item, image), output in zip(batch, outputs):
                hw = (image.height, image.width)
                yield {**item, "height": hw[0], "width": hw[1],
                       "detections": to_coco_results(output, item["id"], input_hw=hw, orig_hw=hw,
                                                     score_threshold=score_threshold)}
            bar.update(len(batch))
        bar.update(len(items) - bar.n)
    check_bad_fraction(stats, max_bad_fraction)


def _readable_batches(items: Sequence[dict[str, Any]], batch_size: int, stats: StreamStats, bad_images: str,
                      exif_orientation: str) -> Iterator[list[tuple[dict[str, Any], Image.Image]]]:
    batch = []
    for item in items:
        stats.images += 1
        image, error = decode_or_none(item["path"], exif_orientation_setting=exif_orientation)
        if image is None:
            record_skipped(stats, item["path"], error, bad_images)
            continue
        batch.append((dict(item), image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch

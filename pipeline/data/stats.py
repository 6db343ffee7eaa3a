"""Dataset reports: counts per split and class, and box size/shape histograms."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from pipeline.data.records import Split

# log-spaced bins: sides 4..1024 px, aspect ratio (h/w) 1/8..8
SIDE_BINS = np.geomspace(4, 1024, 25)
RATIO_BINS = np.geomspace(1 / 8, 8, 25)


def split_summary(split: Split, counts: Counter) -> dict[str, Any]:
    """Images, boxes (crowd included and separately), classes, boxes per class, and the
    box outcomes counted while reading (clipped, dropped..., filtered_by_class)."""
    boxes, num_images = split.boxes, len(split.images)
    per_class = np.bincount(boxes.labels, minlength=len(split.class_names) + 1)
    with_boxes = np.bincount(boxes.image, minlength=num_images) > 0
    return {
        "images": num_images,
        "images_without_boxes": int(num_images - with_boxes.sum()),
        "boxes": len(boxes),
        "crowd_boxes": int(boxes.iscrowd.sum()),
        "classes": len(split.class_names),
        "boxes_per_class": {name: int(per_class[i + 1]) for i, name in enumerate(split.class_names)},
        "input_boxes": dict(sorted(counts.items())),
    }


def box_stats(split: Split) -> dict[str, Any]:
    """Width, height, sqrt(area) and aspect ratio (h/w) of non-crowd boxes: quantiles and
    histograms (``bins`` are the edges, ``counts`` one fewer), in original image pixels.

    Vectorised over all boxes (no sampling): a million boxes take well under a second."""
    xywh = split.boxes.xywh[split.boxes.iscrowd == 0]  # (N, 4)
    values = {"width": xywh[:, 2], "height": xywh[:, 3], "sqrt_area": np.sqrt(xywh[:, 2] * xywh[:, 3]),
              "aspect_ratio": xywh[:, 3] / np.maximum(xywh[:, 2], 1e-9)}
    out: dict[str, Any] = {"boxes": len(xywh)}
    for name, v in values.items():
        bins = RATIO_BINS if name == "aspect_ratio" else SIDE_BINS
        counts, _ = np.histogram(np.clip(v, bins[0], bins[-1]), bins=bins)
        q = np.quantile(v, [0.0, 0.1, 0.5, 0.9, 1.0]).round(3).tolist() if len(v) else [None] * 5
        out[name] = {"min": q[0], "p10": q[1], "median": q[2], "p90": q[3], "max": q[4],
                     "bins": bins.round(4).tolist(), "counts": counts.tolist()}
    return out


def plot_box_stats(stats: dict[str, dict[str, Any]], path: str) -> None:
    """2x2 histograms (log x axis) of width, height, sqrt(area), aspect ratio per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, name in zip(axes.flat, ("width", "height", "sqrt_area", "aspect_ratio")):
        for split, s in stats.items():
            bins = np.asarray(s[name]["bins"])
            ax.stairs(s[name]["counts"], bins, label=f"{split} ({s['boxes']} boxes)", fill=split == "train",
                      alpha=0.5 if split == "train" else 1.0)
        ax.set_xscale("log")
        ax.set(xlabel=f"{name.replace('_', ' ')}" + (" (h/w)" if name == "aspect_ratio" else " (px)"),
               ylabel="boxes")
        ax.legend(fontsize=8)
    fig.suptitle("ground-truth boxes (original image pixels, crowd excluded)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

"""``python -m pipeline prepare``: read the configured source (``data`` params), validate it,
and write COCO annotations to ``data/prepared/`` plus data reports.

Outputs (relative to the working directory):

* ``data/prepared/{train,val}.json`` (and ``test.json``: a held-out split, ``data.test_fraction``
  or ``data.coco.test_annotations``, that sweeps never select on), whose ``file_name`` entries point at the source images where
  they are (COCO, VOC: nothing is copied); the synthetic source writes its generated images
  to ``data/prepared/images/{train,val}/`` (see :mod:`pipeline.data.export` for the layout);
* ``reports/data.json``: images, boxes, classes per split, boxes per class, and every
  clipped / dropped / filtered / difficult count;
* ``reports/box_stats.json`` + ``.png``: box width/height/area/aspect-ratio histograms;
* ``reports/anchor_fit.json`` + ``.png``: best possible recall of the ``model.anchors``
  after the ``data.resize`` resize (see :mod:`pipeline.data.anchor_fit`);
* ``reports/data_metrics.json``: the headline for ``dvc metrics``: ``anchor_bpr`` (train split).

All input is read and checked before the old outputs are removed and rewritten, so a
failed run leaves the previous dataset in place and a smaller dataset leaves no stale files.
Memory stays flat: the splits are compact arrays (:mod:`pipeline.data.records`), image headers
are checked in worker processes, and the JSON is written in chunks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.params import DataParams, Params, ParamsError

PREPARED_DIR = Path("data/prepared")
REPORTS_DIR = Path("reports")
REPORT_FILES = ("data.json", "box_stats.json", "box_stats.png", "anchor_fit.json", "anchor_fit.png",
                "data_metrics.json")


@dataclass(frozen=True)
class AnchorSettings:
    """The model's anchors as the anchor-fit report needs them."""

    strides: list[int]
    scales: list[float] | list[list[float]]
    aspect_ratios: list[float]
    fg_iou: float


def run(params: Params, args: argparse.Namespace) -> int:
    """Stage entry point: bad input is printed as ``error: ...`` with exit code 2."""
    from pipeline.data.errors import DataError

    try:
        model = params.detector_config(num_classes=1)
        anchors = AnchorSettings(strides=list(model.strides), scales=model.anchors.scales,
                                 aspect_ratios=list(model.anchors.aspect_ratios),
                                 fg_iou=float(model.rpn.iou_thresholds[1]))
        start = time.perf_counter()
        report = prepare(params.data, anchors)
    except (DataError, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split in ("train", "val", "test"):
        if split not in report["data"]:
            continue
        s = report["data"][split]
        print(f"{split}: {s['images']} images, {s['boxes']} boxes ({s['crowd_boxes']} crowd/difficult), "
              f"{s['classes']} classes; input boxes: {s['input_boxes'] or 'all valid'}")
    fit = report["anchor_fit"]
    print(f"anchor fit (train): best possible recall {fit['bpr']}, mean best IoU {fit['mean_best_iou']} "
          f"at RPN foreground IoU {anchors.fg_iou}")
    for warning in fit["train"]["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {PREPARED_DIR}/ and {REPORTS_DIR}/ in {time.perf_counter() - start:.1f} s")
    return 0


def prepare(data: DataParams, anchors: AnchorSettings, out_dir: Path = PREPARED_DIR,
            reports_dir: Path = REPORTS_DIR, workers: int | None = None) -> dict[str, Any]:
    """Read, validate and write the dataset and its reports; return ``{"data", "anchor_fit"}``.

    Args:
        workers: image-check processes (default: one per available CPU).

    Raises:
        DataError: bad input, with the file and record named.
    """
    from pipeline.data.anchor_fit import anchor_fit_flat, best_anchor_iou_flat, gt_from_split, plot_anchor_fit
    from pipeline.data.export import check_held_out, check_unique_files, write_split
    from pipeline.data.sources import hold_out_test, load_splits
    from pipeline.data.stats import box_stats, plot_box_stats, split_summary
    from pipeline.data.validate import check_images

    counts = {"train": Counter(), "val": Counter(), "test": Counter()}
    train, val = load_splits(data, counts)
    train, test = hold_out_test(data, train, counts)
    held_out = {"test": test} if test is not None else {}
    for split in (train, val, *held_out.values()):
        check_unique_files(split)  # bad input too: find it before deleting anything
    if test is not None:
        check_held_out(test, [train, val])
    exif = check_images([train, val, *held_out.values()], mode=data.verify_images, workers=workers,
                        exif=data.exif_orientation)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    reports_dir.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        (reports_dir / name).unlink(missing_ok=True)
    splits = {"train": train, "val": val, **held_out}
    for split in splits.values():
        write_split(split, out_dir)

    data_report: dict[str, Any] = {
        "source": data.source, "on_invalid_box": data.on_invalid_box, "class_names": train.class_names,
        "verify_images": data.verify_images, "images_copied": train.images.pixels is not None,
        # images with an EXIF orientation tag (not 1), and how many of them are read turned upright
        "exif_orientation": {"setting": data.exif_orientation, "tagged": exif["exif_tagged"],
                             "turned": exif["exif_turned"]},
        **{name: split_summary(split, counts[name]) for name, split in splits.items()},
    }
    _write_json(reports_dir / "data.json", data_report)
    stats = {name: box_stats(split) for name, split in splits.items()}
    _write_json(reports_dir / "box_stats.json", stats)
    plot_box_stats(stats, str(reports_dir / "box_stats.png"))

    fits, ious = {}, {}
    for name, split in (("train", train), ("val", val)):
        boxes, image_hw, labels = gt_from_split(split, data.resize.min_size, data.resize.max_size)
        ious[name] = best_anchor_iou_flat(boxes, image_hw, anchors.strides, anchors.scales, anchors.aspect_ratios)
        fits[name] = anchor_fit_flat(boxes, image_hw, labels, anchors.strides, anchors.scales, anchors.aspect_ratios,
                                     anchors.fg_iou, class_names=train.class_names, best_ious=ious[name],
                                     suggest=name == "train")  # a quick anchor search names better anchors
    fit_report = {"bpr": fits["train"]["bpr"], "mean_best_iou": fits["train"]["mean_best_iou"],
                  "resize": {"min_size": data.resize.min_size, "max_size": data.resize.max_size}, **fits}
    _write_json(reports_dir / "anchor_fit.json", fit_report)
    _write_json(reports_dir / "data_metrics.json", {"anchor_bpr": fit_report["bpr"]})
    plot_anchor_fit(fits, ious, str(reports_dir / "anchor_fit.png"))
    return {"data": data_report, "anchor_fit": fit_report}


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")

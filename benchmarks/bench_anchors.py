"""Time `python -m pipeline anchors` on a large, realistic box set (target: 100k boxes in <= 30 s).

Writes a COCO ``train.json`` of ``--boxes`` boxes (default 100,000) in a temporary folder: images of
360-640 x 480-640 px like COCO's, 1-15 boxes each, sizes a mix of small / medium / large as in COCO
(about 41 / 34 / 25 % by area before the resize), aspect ratios ``h/w`` log-normal (sigma 0.6, 1:6..6:1),
5 classes. Then it runs the stage's work (:func:`pipeline.anchors.fit_and_report`: read the JSON,
resize the boxes, search, score, table, YAML/JSON, plot) with the model, resize and ``anchors``
settings of ``--params``, and prints the wall time and the load average.

The peer, measured in the same run: the best anchor IoU of every box computed by building every
anchor of the image (:func:`pipeline.anchor_search.geometry.best_iou_every_anchor`)
against the nearest-centre evaluation the search runs on (:class:`pipeline.anchor_search.geometry.BoxGrid`),
on ``--peer-boxes`` boxes; both must agree.

    python benchmarks/bench_anchors.py [--boxes 100000] [--params params.yaml] [--peer-boxes 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_coco(num_boxes: int, seed: int = 0) -> dict:
    """A COCO dict with ``num_boxes`` boxes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    image_id = 0
    while len(annotations) < num_boxes:
        image_id += 1
        w, h = int(rng.integers(480, 641)), int(rng.integers(360, 641))
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": w, "height": h})
        for _ in range(min(int(rng.integers(1, 16)), num_boxes - len(annotations))):
            kind = rng.choice(3, p=[0.41, 0.34, 0.25])  # COCO: small < 32^2 <= medium < 96^2 <= large
            side = float(np.exp(rng.uniform(*[(np.log(6), np.log(32)), (np.log(32), np.log(96)),
                                              (np.log(96), np.log(0.8 * min(w, h)))][kind])))
            ratio = float(np.exp(np.clip(rng.normal(0.0, 0.6), -np.log(6), np.log(6))))  # h / w
            bw, bh = min(side / np.sqrt(ratio), w - 1.0), min(side * np.sqrt(ratio), h - 1.0)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.integers(1, 6)), "bbox": [x, y, bw, bh],
                                "area": bw * bh, "iscrowd": 0})
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 6)]
    return {"images": images, "annotations": annotations, "categories": categories}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, default=100_000)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override, as `python -m pipeline --set`")
    parser.add_argument("--peer-boxes", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from pipeline.anchor_search.geometry import BoxGrid, best_iou_every_anchor
    from pipeline.anchor_search.search import AnchorSet
    from pipeline.anchors import fit_and_report
    from pipeline.data.anchor_fit import gt_from_coco
    from pipeline.params import load_params

    params = load_params(args.params, args.overrides)
    config = params.detector_config(num_classes=5)
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}, cpus: {os.cpu_count()}")
    coco = make_coco(args.boxes, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "prepared"
        data_dir.mkdir()
        (data_dir / "train.json").write_text(json.dumps(coco))
        start = time.perf_counter()
        outcome = fit_and_report(params, data_dir=data_dir, out_dir=Path(tmp) / "reports")
        total = time.perf_counter() - start
    result = outcome["result"]
    print(f"{len(coco['annotations'])} boxes in {len(coco['images'])} images, resize "
          f"{params.data.resize.min_size}/{params.data.resize.max_size}, strides {config.strides}, "
          f"budget {result.budget}, search on {result.search_boxes} boxes")
    print(f"BPR {result.start_score.bpr:.4f} -> {result.fitted_score.bpr:.4f}, fitted {result.fitted.as_params()}")
    print(f"anchors stage work (read, search, score, reports, plot): {total:.1f} s "
          f"(search {result.seconds:.1f} s, {result.evaluations} candidates); target <= 30 s")

    # the peer: every anchor of the image vs the nearest cell centre, on the same boxes
    boxes, sizes, _ = gt_from_coco(coco, params.data.resize.min_size, params.data.resize.max_size)
    keep, count = [], 0
    for i, b in enumerate(boxes):
        if count >= args.peer_boxes:
            break
        keep.append(i)
        count += len(b)
    sub_boxes, sub_sizes = [boxes[i] for i in keep], [sizes[i] for i in keep]
    anchors = AnchorSet.of(config.anchors.scales, config.anchors.aspect_ratios)
    t = time.perf_counter()
    flat_boxes = np.concatenate([np.asarray(b).reshape(-1, 4) for b in sub_boxes])
    flat_hw = np.repeat(np.asarray(sub_sizes), [len(b) for b in sub_boxes], axis=0)
    reference = best_iou_every_anchor(flat_boxes, flat_hw, config.strides, anchors.as_params()["scales"],
                                      anchors.aspect_ratios)
    t_reference = time.perf_counter() - t
    t = time.perf_counter()
    grid = BoxGrid.from_images(sub_boxes, sub_sizes, config.strides)
    fast = grid.best_iou(anchors.shapes(config.strides))
    t_fast = time.perf_counter() - t
    print(f"best IoU of {count} boxes: every anchor (best_iou_every_anchor) {t_reference * 1e3:.0f} ms, nearest centre "
          f"(BoxGrid) {t_fast * 1e3:.1f} ms: ratio {t_fast / t_reference:.4f} ({t_reference / t_fast:.0f}x faster); "
          f"max |difference| {np.abs(reference - fast).max():.1e}")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time our FasterRCNN against torchvision's, configured identically, on CPU.

Both models share the backbone + FPN weights (a copy of ours), the RPN head and
box head weights, anchors (same sizes and ratios), proposal counts, matching
thresholds, RoI sampling, RoIAlign (7x7, sampling_ratio=2) and post-processing.
torchvision's transform gets the same normalisation and does not resize.

Usage::

    python benchmarks/bench_detector.py [--sizes 224 512] [--batch 2] [--iters 7] [--threads 2] [--clock wall]

Prints the median time of a training step (forward + backward) and of an
inference pass for each model, and the ratio ours / torchvision.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import MultiScaleRoIAlign

from detector import DetectorConfig, FasterRCNN, build_model


class _TVBackbone(nn.Module):
    """Our backbone + FPN with torchvision's interface (an OrderedDict of maps)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.inner = backbone
        self.out_channels = backbone.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((str(k), f) for k, f in enumerate(self.inner(x)))


def torchvision_twin(model: FasterRCNN, image_size: int) -> TVFasterRCNN:
    """torchvision's FasterRCNN with the same configuration and weights as ``model``."""
    cfg: DetectorConfig = model.config
    assert cfg.fpn_levels == [3, 4, 5] and not cfg.anchors.per_level
    strides = model.backbone.strides
    anchor_gen = TVAnchorGenerator(
        sizes=tuple(tuple(s * scale for scale in cfg.anchors.scales) for s in strides),
        aspect_ratios=(tuple(cfg.anchors.aspect_ratios),) * len(strides),
    )
    num_anchors = anchor_gen.num_anchors_per_location()[0]
    rpn_head = TVRPNHead(cfg.fpn_channels, num_anchors, conv_depth=len(cfg.rpn_stem_channels))
    names = [str(k) for k in range(len(strides))]
    C = cfg.num_classes
    tv = TVFasterRCNN(
        _TVBackbone(copy.deepcopy(model.backbone)),
        num_classes=None,
        min_size=image_size,
        max_size=image_size,
        image_mean=cfg.image_mean,
        image_std=cfg.image_std,
        rpn_anchor_generator=anchor_gen,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg.rpn.pre_nms_topk_train,
        rpn_pre_nms_top_n_test=cfg.rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_train=cfg.rpn.post_nms_topk_train,
        rpn_post_nms_top_n_test=cfg.rpn.post_nms_topk_test,
        rpn_nms_thresh=cfg.rpn.nms_threshold,
        rpn_fg_iou_thresh=cfg.rpn.iou_thresholds[1],
        rpn_bg_iou_thresh=cfg.rpn.iou_thresholds[0],
        rpn_batch_size_per_image=cfg.rpn.batch_size_per_image,
        rpn_positive_fraction=cfg.rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(names, cfg.roi.output_size, cfg.roi.sampling_ratio),
        box_head=TwoMLPHead(cfg.fpn_channels * cfg.roi.output_size**2, cfg.roi.head_dim),
        box_predictor=FastRCNNPredictor(cfg.roi.head_dim, C + 1),
        box_score_thresh=cfg.roi.score_threshold,
        box_nms_thresh=cfg.roi.nms_threshold,
        box_detections_per_img=cfg.roi.detections_per_image,
        box_fg_iou_thresh=cfg.roi.iou_threshold,
        box_bg_iou_thresh=cfg.roi.iou_threshold,
        box_batch_size_per_image=cfg.roi.batch_size_per_image,
        box_positive_fraction=cfg.roi.positive_fraction,
        bbox_reg_weights=tuple(cfg.roi.box_weights),
    )
    tv.transform.resize = lambda image, target=None: (image, target)  # same inputs, no resizing
    with torch.no_grad():  # same head weights, so both keep similar numbers of boxes
        ours_rpn, theirs_rpn = model.rpn.head, tv.rpn.head
        for ours_conv, theirs_conv in zip(ours_rpn.stem, theirs_rpn.conv):
            theirs_conv[0].load_state_dict(ours_conv.state_dict())
        theirs_rpn.cls_logits.load_state_dict(ours_rpn.objectness.state_dict())
        theirs_rpn.bbox_pred.load_state_dict(ours_rpn.deltas.state_dict())
        head = model.roi_heads.box_head
        S, D = cfg.roi.output_size, cfg.roi.head_dim
        # our fc6 reads RoI features channels-last (S, S, F); torchvision's reads (F, S, S)
        tv.roi_heads.box_head.fc6.weight.copy_(
            head.fc6.weight.view(D, S, S, -1).permute(0, 3, 1, 2).reshape(D, -1)
        )
        tv.roi_heads.box_head.fc6.bias.copy_(head.fc6.bias)
        tv.roi_heads.box_head.fc7.load_state_dict(head.fc7.state_dict())
        tv.roi_heads.box_predictor.cls_score.load_state_dict(head.cls_score.state_dict())
        tv.roi_heads.box_predictor.bbox_pred.weight.zero_()
        tv.roi_heads.box_predictor.bbox_pred.bias.zero_()
        tv.roi_heads.box_predictor.bbox_pred.weight[4:] = head.bbox_pred.weight
        tv.roi_heads.box_predictor.bbox_pred.bias[4:] = head.bbox_pred.bias
    return tv


def make_batch(batch: int, size: int, num_classes: int, gen: torch.Generator):
    images = [torch.rand(3, size, size, generator=gen) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(5, 2, generator=gen) * size * 0.7
        wh = torch.rand(5, 2, generator=gen) * size * 0.3 + 8
        labels = torch.randint(1, num_classes + 1, (5,), generator=gen)
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1), "labels": labels})
    return images, targets


def interleaved_medians(fns: dict[str, object], iters: int, clock, warmup: int = 2) -> dict[str, float]:
    """Median time of each function, calls interleaved so that load drifts hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t = clock()
            fn()
            times[name].append(clock() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench(size: int, batch: int, iters: int, config: DetectorConfig, clock) -> dict[str, float]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ours = build_model(config)
    theirs = torchvision_twin(ours, size)
    images, targets = make_batch(batch, size, config.num_classes, gen)

    def train_step(model):
        def run():
            model.train()
            losses = model(images, targets)
            model.zero_grad(set_to_none=True)
            sum(losses.values()).backward()

        return run

    def infer(model):
        def run():
            model.eval()
            with torch.no_grad():
                model(images)

        return run

    out = {}
    for kind, make in (("train", train_step), ("infer", infer)):
        medians = interleaved_medians({"ours": make(ours), "tv": make(theirs)}, iters, clock)
        out[f"{kind}_ours"], out[f"{kind}_tv"] = medians["ours"], medians["tv"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default="regnet_x_400mf")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: time.perf_counter; cpu: process CPU time (steadier on a shared machine, use with --threads 1)",
    )
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    config = DetectorConfig(num_classes=args.num_classes, backbone=args.backbone)
    print(
        f"torch {torch.__version__}, threads {args.threads}, batch {args.batch}, backbone {args.backbone}, "
        f"fpn {config.fpn_levels}x{config.fpn_channels}, {args.clock} clock, median of {args.iters} iterations"
    )
    print(f"{'size':>5} {'step':>6} {'ours (s)':>9} {'torchvision (s)':>16} {'ours/tv':>8}")
    for size in args.sizes:
        r = bench(size, args.batch, args.iters, config, clock)
        for kind in ("train", "infer"):
            ours, tv = r[f"{kind}_ours"], r[f"{kind}_tv"]
            print(f"{size:>5} {kind:>6} {ours:>9.3f} {tv:>16.3f} {ours / tv:>8.2f}", flush=True)


if __name__ == "__main__":
    main()

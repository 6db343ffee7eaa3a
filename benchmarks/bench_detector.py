"""Our FasterRCNN against torchvision's, configured identically, in one run.

Both models share the backbone + FPN weights (a copy of ours), the RPN head and box head
weights, anchors (same sizes and ratios), proposal counts, matching thresholds, RoI
sampling, RoIAlign (7x7, sampling_ratio=2) and post-processing. torchvision's transform
gets the same normalisation and does not resize.

Usage::

    # CPU (the defaults): regnet_x_400mf, p3-p5, 2 images of 224 and 512 px
    python benchmarks/bench_detector.py [--sizes 224 512] [--batch 2] [--iters 7] [--threads 2]
    # GPU: ResNet-50-FPN p2-p6, 800x1333, batch 8, bf16 autocast, + a one-GPU NCCL DDP step
    python benchmarks/bench_detector.py --device cuda --amp bf16 --backbone resnet50 \
        --fpn-levels 2 3 4 5 6 --sizes 800x1333 --batch 8 --boxes 100 --ddp --memory
    # peak memory of one training step on the CPU (each model in its own process)
    python benchmarks/bench_detector.py --backbone resnet50 --fpn-levels 2 3 4 5 6 \
        --sizes 800x1333 --batch 2 --boxes 100 --memory-only

Prints, per size: the median time of a training step (forward + backward; images/s) and
of an inference pass for each model and the ratio ours / torchvision; host syncs of one
training step; with ``--memory`` the peak memory of a training step; with ``--ddp`` a
training step through ``DistributedDataParallel`` (world size 1: NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import MultiScaleRoIAlign

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from detector import DetectorConfig, FasterRCNN, build_model  # noqa: E402
from detector.syncs import HostSyncCounter  # noqa: E402


class _TVBackbone(nn.Module):
    """Our backbone + FPN with torchvision's interface (an OrderedDict of maps)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.inner = backbone
        self.out_channels = backbone.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((str(k), f) for k, f in enumerate(self.inner(x)))


def torchvision_twin(model: FasterRCNN, image_size: tuple[int, int]) -> TVFasterRCNN:
    """torchvision's FasterRCNN with the same configuration and weights as ``model``."""
    cfg: DetectorConfig = model.config
    assert not cfg.anchors.per_level
    strides = model.backbone.strides
    anchor_gen = TVAnchorGenerator(
        sizes=tuple(tuple(s * scale for scale in cfg.anchors.scales) for s in strides),
        aspect_ratios=(tuple(cfg.anchors.aspect_ratios),) * len(strides),
    )
    num_anchors = anchor_gen.num_anchors_per_location()[0]
    rpn_head = TVRPNHead(cfg.fpn_channels, num_anchors, conv_depth=len(cfg.rpn_stem_channels))
    pooled = [str(k) for k, level in enumerate(cfg.fpn_levels) if level <= 5]
    C = cfg.num_classes
    tv = TVFasterRCNN(
        _TVBackbone(copy.deepcopy(model.backbone)),
        num_classes=None,
        min_size=min(image_size),
        max_size=max(image_size),
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
        box_roi_pool=MultiScaleRoIAlign(pooled, cfg.roi.output_size, cfg.roi.sampling_ratio),
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


def make_batch(batch: int, size: tuple[int, int], boxes: int, num_classes: int, gen: torch.Generator):
    """``batch`` images of ``size`` with ``boxes`` boxes each: all sizes, some elongated (1:4..4:1)."""
    h, w = size
    images = [torch.rand(3, h, w, generator=gen) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        side = torch.exp(torch.empty(boxes).uniform_(3.0, 6.0, generator=gen))  # ~20..400 px
        ratio = torch.exp(torch.empty(boxes).uniform_(-1.4, 1.4, generator=gen))  # h / w in 1:4..4:1
        bw, bh = (side / ratio.sqrt()).clamp(4, w - 1), (side * ratio.sqrt()).clamp(4, h - 1)
        x = torch.rand(boxes, generator=gen) * (w - bw)
        y = torch.rand(boxes, generator=gen) * (h - bh)
        labels = torch.randint(1, num_classes + 1, (boxes,), generator=gen)
        targets.append({"boxes": torch.stack([x, y, x + bw, y + bh], 1), "labels": labels})
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


class Setup:
    """Both models, one batch on ``device``, and their step functions."""

    def __init__(self, config: DetectorConfig, size: tuple[int, int], batch: int, boxes: int,
                 device: torch.device, amp: str) -> None:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        self.device = device
        self.ours = build_model(config).to(device)
        self.theirs = torchvision_twin(self.ours, size).to(device)
        images, targets = make_batch(batch, size, boxes, config.num_classes, gen)
        self.images = [img.to(device) for img in images]
        self.cpu_targets = targets  # ours checks targets on the host (the loader's tensors)
        self.device_targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.fused = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, which: str, model: nn.Module | None = None):
        model = model or (self.ours if which == "ours" else self.theirs)
        targets = self.cpu_targets if which == "ours" else self.device_targets

        def run():
            model.train()
            with self.autocast():
                losses = model(self.images, targets)
            model.zero_grad(set_to_none=True)
            self.scaler.scale(sum(losses.values())).backward()
            self.sync()

        return run

    def infer(self, which: str):
        if which == "ours":  # what evaluation and prediction run: batch norm fused into the convs
            if self.fused is None:
                self.fused = copy.deepcopy(self.ours).fuse_for_inference()
            model = self.fused
        else:
            model = self.theirs

        def run():
            model.eval()
            with torch.inference_mode(), self.autocast():
                model(self.images)
            self.sync()

        return run

    def host_syncs(self, which: str) -> int:
        """Host syncs of one training step (``HostSyncCounter`` on the device; on the CPU, the
        CPU stands in for one); ours with the kernels it picks on CUDA on any device."""
        model = self.ours if which == "ours" else self.theirs
        if which == "ours":
            saved = model.rpn.nms_impl, model.roi_heads.pooler.backend
            model.rpn.nms_impl, model.roi_heads.pooler.backend = "matrix", "torchvision"
        try:
            with HostSyncCounter(self.device) as counter:
                self.train_step(which)()
        finally:
            if which == "ours":
                model.rpn.nms_impl, model.roi_heads.pooler.backend = saved
        return counter.total

    def peak_memory(self, which: str) -> float:
        """Peak CUDA memory of one training step above what was allocated before it (MiB)."""
        step = self.train_step(which)
        step()
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        step()
        return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20


def ddp_step_times(setup: Setup, iters: int, clock) -> dict[str, float]:
    """Median training-step time of both models wrapped in DDP (world size 1)."""
    import torch.distributed as dist

    backend = "nccl" if setup.device.type == "cuda" else "gloo"
    store = tempfile.mktemp(prefix="ddp-store-")
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    try:
        ids = [setup.device.index or 0] if setup.device.type == "cuda" else None
        # ours as built (channels-last weights), ours with default-layout weights (DDP then copies
        # every conv gradient into its bucket: "grad strides do not match bucket view strides")
        default_layout = copy.deepcopy(setup.ours).to(memory_format=torch.contiguous_format)
        models = (("ours", setup.ours), ("ours_default_layout", default_layout), ("tv", setup.theirs))
        fns = {name: setup.train_step("ours" if name.startswith("ours") else "tv",
                                      nn.parallel.DistributedDataParallel(model, device_ids=ids))
               for name, model in models}
        return interleaved_medians(fns, iters, clock)
    finally:
        dist.destroy_process_group()


def cpu_peak_rss(args: argparse.Namespace, size: tuple[int, int], which: str) -> float:
    """Peak RSS of one training step above the RSS before it (MiB), in a fresh process."""
    cmd = [sys.executable, __file__, "--_child", which, "--sizes", f"{size[0]}x{size[1]}",
           *_model_args(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _child(args: argparse.Namespace) -> None:
    size = args.sizes[0]
    setup = Setup(_config(args), size, args.batch, args.boxes, torch.device("cpu"), "off")
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    setup.train_step(args._child)()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"peak_mib": peak - before}))


def _model_args(args: argparse.Namespace) -> list[str]:
    return ["--backbone", args.backbone, "--fpn-levels", *map(str, args.fpn_levels), "--batch", str(args.batch),
            "--boxes", str(args.boxes), "--num-classes", str(args.num_classes), "--threads", str(args.threads)]


def _config(args: argparse.Namespace) -> DetectorConfig:
    return DetectorConfig.from_dict(
        {"backbone": args.backbone, "fpn_levels": args.fpn_levels, "fpn_channels": args.fpn_channels,
         "anchors": {"scales": [8], "aspect_ratios": [0.5, 1.0, 2.0]}},
        num_classes=args.num_classes,
    )


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(224, 224), (512, 512)],
                        help="image sizes, H or HxW")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=5, help="ground-truth boxes per image")
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default="regnet_x_400mf")
    parser.add_argument("--fpn-levels", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--fpn-channels", type=int, default=None, help="default: 256 for resnet50, else 128")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--ddp", action="store_true", help="also time a DDP training step (world size 1)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory of a training step")
    parser.add_argument("--memory-only", action="store_true", help="only peak memory (CPU: one process per model)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: process CPU time (steadier on a shared machine, "
                             "use with --threads 1)")
    parser.add_argument("--_child", choices=["ours", "tv"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fpn_channels is None:
        args.fpn_channels = 256 if args.backbone == "resnet50" else 128
    torch.set_num_threads(args.threads)
    if args._child:
        return _child(args)
    device = torch.device(args.device)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    config = _config(args)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"torch {torch.__version__}, torchvision {__import__('torchvision').__version__}, {gpu}, "
          f"amp {args.amp}, batch {args.batch}, {args.boxes} boxes/image, backbone {args.backbone}, "
          f"fpn {config.fpn_levels}x{config.fpn_channels}, {args.clock} clock, median of {args.iters} iterations",
          flush=True)
    for size in args.sizes:
        label = f"{size[0]}x{size[1]}"
        if args.memory_only or (args.memory and device.type == "cpu"):
            if device.type != "cpu":
                setup = Setup(config, size, args.batch, args.boxes, device, args.amp)
                mem = {w: setup.peak_memory(w) for w in ("ours", "tv")}
            else:
                mem = {w: cpu_peak_rss(args, size, w) for w in ("ours", "tv")}
            kind = "peak RSS" if device.type == "cpu" else "peak CUDA memory"
            print(f"{label} train step {kind} above the start (MiB): ours {mem['ours']:.0f}, "
                  f"torchvision {mem['tv']:.0f}, ours/tv {mem['ours'] / mem['tv']:.2f}", flush=True)
            if args.memory_only:
                continue
        setup = Setup(config, size, args.batch, args.boxes, device, args.amp)
        syncs = {w: setup.host_syncs(w) for w in ("ours", "tv")}
        print(f"{label} host syncs in one training step: ours {syncs['ours']} (CUDA configuration), "
              f"torchvision {syncs['tv']}")
        print(f"{'size':>10} {'step':>6} {'ours (s)':>9} {'tv (s)':>8} {'ours img/s':>11} {'tv img/s':>9} "
              f"{'ours/tv time':>13}")
        rows = [("train", setup.train_step), ("infer", setup.infer)]
        for kind, make in rows:
            med = interleaved_medians({"ours": make("ours"), "tv": make("tv")}, args.iters, clock)
            _row(label, kind, med, args.batch)
        if args.memory and device.type == "cuda":
            mem = {w: setup.peak_memory(w) for w in ("ours", "tv")}
            print(f"{label} train step peak CUDA memory above the start (MiB): ours {mem['ours']:.0f}, "
                  f"torchvision {mem['tv']:.0f}, ours/tv {mem['ours'] / mem['tv']:.2f}", flush=True)
        if args.ddp:
            med = ddp_step_times(setup, args.iters, clock)
            _row(label, "ddp", med, args.batch)
            print(f"{label} DDP step of ours with default-layout weights: {med['ours_default_layout']:.3f} s "
                  f"(channels-last weights: {med['ours']:.3f} s, "
                  f"{med['ours_default_layout'] / med['ours']:.2f}x)", flush=True)


def _row(label: str, kind: str, med: dict[str, float], batch: int) -> None:
    ours, tv = med["ours"], med["tv"]
    print(f"{label:>10} {kind:>6} {ours:>9.3f} {tv:>8.3f} {batch / ours:>11.1f} {batch / tv:>9.1f} "
          f"{ours / tv:>13.2f}", flush=True)


if __name__ == "__main__":
    main()

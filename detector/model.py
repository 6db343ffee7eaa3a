"""Faster R-CNN: input batching, backbone + FPN, RPN, RoI heads; and its builder.

Shapes: ``B`` images, ``G`` ground-truth boxes of an image, ``C`` classes.

Batching and batch-size independence: images are normalised, then zero-padded to
a multiple of the largest stride. Images whose padded sizes differ go through the
backbone in separate groups (one group per padded size; usually the whole batch
is one group), and their feature maps are then zero-padded to a common size. The
RPN ignores anchors outside an image's own extent and clips proposals to its true
size, so an image gets the same detections alone as inside any batch.

The backbone runs channels-last (faster CPU convolutions; the RoI pooler reads
channels-last rows anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.backbone import Backbone, build_backbone
from detector.boxes import BoxCoder
from detector.config import DetectorConfig
from detector.matching import Matcher
from detector.pooling import MultiLevelRoIAlign
from detector.roi_heads import BoxHead, RoIHeads
from detector.rpn import RPN, RPNHead, Targets

__all__ = ["FasterRCNN", "build_model"]


class FasterRCNN(nn.Module):
    """Two-stage detector with torchvision's calling convention.

    ``model(images, targets)`` in train mode returns
    ``{"loss_rpn_obj", "loss_rpn_box", "loss_cls", "loss_box"}``; ``model(images)``
    in eval mode returns one ``{"boxes" (N, 4) xyxy pixels, "scores" (N,), "labels"
    (N,) int64 in 1..C}`` per image.

    Args:
        backbone: trunk + FPN with explicit ``strides``.
        rpn: the region proposal network.
        roi_heads: the second stage.
        image_mean, image_std: RGB normalisation of ``[0, 1]`` inputs.
        config: the :class:`DetectorConfig` this was built from (kept for checkpoints).
        class_names: names of classes ``1..C`` (default: from ``config``).
    """

    def __init__(
        self,
        backbone: Backbone,
        rpn: RPN,
        roi_heads: RoIHeads,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        config: DetectorConfig | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer("image_mean", torch.tensor(image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(3, 1, 1), persistent=False)
        self.size_divisible = max(backbone.strides)
        self.config = config
        self.class_names = (
            class_names if class_names is not None else (config.class_names if config else None)
        )
        self.num_classes = roi_heads.num_classes

    # ------------------------------------------------------------------ inputs
    def _as_list(self, images: Sequence[Tensor] | Tensor) -> list[Tensor]:
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images: expected a (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
            return list(images.unbind(0))
        images = list(images)
        if not images:
            raise ValueError("images: empty batch")
        for k, img in enumerate(images):
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
                shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"images[{k}]: expected a (3, H, W) tensor, got {shape}")
        return images

    def _padded(self, size: int) -> int:
        d = self.size_divisible
        return (size + d - 1) // d * d

    def features(self, images: list[Tensor]) -> tuple[list[Tensor], Tensor, Tensor | None]:
        """Normalise, pad, run the backbone per padded-size group.

        Returns per-level features ``(B, F, H_l, W_l)``, true sizes ``(B, 2)`` and
        each image's padded size ``(B, 2)`` when the batch mixes sizes (else None).
        """
        device = self.image_mean.device
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        padded = [(self._padded(h), self._padded(w)) for h, w in sizes]
        groups: dict[tuple[int, int], list[int]] = {}
        for k, p in enumerate(padded):
            groups.setdefault(p, []).append(k)
        dtype = self.image_mean.dtype
        per_group = []
        for (ph, pw), members in groups.items():
            batch = torch.zeros(len(members), 3, ph, pw, device=device, dtype=dtype)
            for row, k in enumerate(members):
                h, w = sizes[k]
                batch[row, :, :h, :w] = (images[k].to(device, dtype) - self.image_mean) / self.image_std
            per_group.append((members, self.backbone(batch.contiguous(memory_format=torch.channels_last))))
        image_sizes = torch.tensor(sizes, device=device)
        if len(per_group) == 1:
            members, feats = per_group[0]
            return feats, image_sizes, None
        # mixed sizes: zero-pad each group's maps to the largest and restore the input order
        order = torch.tensor([k for members, _ in per_group for k in members], device=device)
        inverse = torch.argsort(order)
        features = []
        for level in range(len(per_group[0][1])):
            H = max(f[level].shape[-2] for _, f in per_group)
            W = max(f[level].shape[-1] for _, f in per_group)
            maps = [
                F.pad(f[level], (0, W - f[level].shape[-1], 0, H - f[level].shape[-2])) for _, f in per_group
            ]
            features.append(torch.cat(maps)[inverse])
        return features, image_sizes, torch.tensor(padded, device=device)

    def prepare_targets(self, targets: Sequence[dict[str, Tensor]], num_images: int) -> Targets:
        """Validate and pad ``targets`` into a :class:`Targets` batch ``(B, G, 4)``."""
        if len(targets) != num_images:
            raise ValueError(f"targets: {len(targets)} targets for {num_images} images")
        device = self.image_mean.device
        boxes, labels = [], []
        for k, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"targets[{k}]: needs 'boxes' and 'labels', got keys {sorted(t)}")
            bx = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            lb = torch.as_tensor(t["labels"], device=device).reshape(-1)
            if lb.shape[0] != bx.shape[0]:
                raise ValueError(f"targets[{k}]: {bx.shape[0]} boxes but {lb.shape[0]} labels")
            bad = ~(torch.isfinite(bx).all(1) & (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1]))
            if bad.any():
                j = int(bad.nonzero()[0])
                raise ValueError(
                    f"targets[{k}]: degenerate box {j}: {bx[j].tolist()} (need finite x1 < x2 and y1 < y2)"
                )
            if lb.numel() and (
                lb.is_floating_point() or int(lb.min()) < 1 or int(lb.max()) > self.num_classes
            ):
                raise ValueError(
                    f"targets[{k}]: labels must be integers in 1..{self.num_classes}, got {lb.tolist()}"
                )
            boxes.append(bx)
            labels.append(lb.to(torch.int64))
        G = max(b.shape[0] for b in boxes)
        out = Targets(
            boxes=torch.zeros(num_images, G, 4, device=device),
            labels=torch.zeros(num_images, G, dtype=torch.int64, device=device),
            valid=torch.zeros(num_images, G, dtype=torch.bool, device=device),
        )
        for k, (bx, lb) in enumerate(zip(boxes, labels)):
            out.boxes[k, : bx.shape[0]] = bx
            out.labels[k, : lb.shape[0]] = lb
            out.valid[k, : bx.shape[0]] = True
        return out

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in train mode (``targets`` required), detections in eval mode.

        Args:
            images: list of ``(3, H, W)`` float images in ``[0, 1]`` (sizes may differ)
                or a ``(B, 3, H, W)`` tensor.
            targets: per image ``{"boxes": (G, 4) xyxy, "labels": (G,) int64 in 1..C}``.
            generator: optional RNG for the anchor/RoI sampling.
        """
        imgs = self._as_list(images)
        if self.training and targets is None:
            raise ValueError("targets: required in training mode (call model.eval() for inference)")
        gt = self.prepare_targets(targets, len(imgs)) if self.training else None
        features, image_sizes, padded_sizes = self.features(imgs)
        proposals, proposal_valid, rpn_losses = self.rpn(features, image_sizes, padded_sizes, gt, generator)
        detections, roi_losses = self.roi_heads(
            features, proposals, proposal_valid, image_sizes, padded_sizes, gt, generator
        )
        if self.training:
            return {**rpn_losses, **roi_losses}
        return detections


def build_model(config: DetectorConfig, load_pretrained: bool = True) -> FasterRCNN:
    """The one place that maps a :class:`DetectorConfig` to modules.

    ``load_pretrained=False`` skips fetching ``config.pretrained`` weights (the
    structure is the same), for loading checkpoints offline.
    """
    backbone = build_backbone(
        config.backbone,
        config.fpn_levels,
        config.fpn_channels,
        pretrained=config.pretrained,
        trainable_layers=config.trainable_backbone_layers,
        load_pretrained=load_pretrained,
    )
    anchors = AnchorGenerator(backbone.strides, config.anchors.scales, config.anchors.aspect_ratios)
    rc = config.rpn
    low, high = rc.iou_thresholds
    rpn = RPN(
        head=RPNHead(config.fpn_channels, config.rpn_stem_channels, anchors.num_anchors_per_location),
        anchor_generator=anchors,
        matcher=Matcher(high, low, rc.allow_low_quality_matches),
        box_coder=BoxCoder(rc.box_weights),
        batch_size_per_image=rc.batch_size_per_image,
        positive_fraction=rc.positive_fraction,
        pre_nms_topk={"train": rc.pre_nms_topk_train, "test": rc.pre_nms_topk_test},
        post_nms_topk={"train": rc.post_nms_topk_train, "test": rc.post_nms_topk_test},
        nms_threshold=rc.nms_threshold,
        min_size=rc.min_size,
        smooth_l1_beta=rc.smooth_l1_beta,
    )
    oc = config.roi
    roi_heads = RoIHeads(
        pooler=MultiLevelRoIAlign(config.fpn_levels, oc.output_size, oc.sampling_ratio),
        box_head=BoxHead(config.fpn_channels, oc.output_size, oc.head_dim, config.num_classes),
        matcher=Matcher(oc.iou_threshold, oc.iou_threshold, allow_low_quality_matches=False),
        box_coder=BoxCoder(oc.box_weights),
        num_classes=config.num_classes,
        batch_size_per_image=oc.batch_size_per_image,
        positive_fraction=oc.positive_fraction,
        smooth_l1_beta=oc.smooth_l1_beta,
        score_threshold=oc.score_threshold,
        nms_threshold=oc.nms_threshold,
        detections_per_image=oc.detections_per_image,
    )
    return FasterRCNN(backbone, rpn, roi_heads, config.image_mean, config.image_std, config=config)

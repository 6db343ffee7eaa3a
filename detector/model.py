"""Faster R-CNN: input batching, backbone + FPN, RPN, RoI heads; and its builder.

Shapes: ``B`` images, ``G`` ground-truth boxes of an image, ``C`` classes.

Batching. Images are normalised, then zero-padded to one tensor whose sides are
multiples of the largest stride (an :class:`ImageBatch`).

* Training runs the backbone **once per batch**, so batch norm sees every image of
  the step and updates its running statistics once. Anchors beyond an image's own
  padded extent are ignored and proposals are clipped to its true size.
* Inference groups the images by padded size and runs each group alone (usually the
  whole batch is one group), so an image gets the same detections alone as inside
  any batch: extra zero padding would change the convolutions near its border.

The model is channels-last throughout (inputs and 4-D weights): faster convolutions,
free RoI feature rows, and DDP gradient buckets that match the weights' layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.backbone import Backbone, build_backbone
from detector.boxes import BoxCoder
from detector.config import DetectorConfig
from detector.fusion import fuse_conv_norm
from detector.matching import Matcher
from detector.pooling import MultiLevelRoIAlign
from detector.roi_heads import BoxHead, RoIHeads
from detector.rpn import RPN, RPNHead
from detector.structures import ImageBatch, Targets

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
        self.fused = False  # set by fuse_for_inference

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

    def batch_images(self, images: list[Tensor]) -> ImageBatch:
        """Normalise and zero-pad ``(3, H_k, W_k)`` images into one channels-last batch."""
        device, dtype = self.image_mean.device, self.image_mean.dtype
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        padded = [(self._padded(h), self._padded(w)) for h, w in sizes]
        H, W = max(p[0] for p in padded), max(p[1] for p in padded)
        batch = torch.empty((len(images), 3, H, W), device=device, dtype=dtype,
                            memory_format=torch.channels_last).zero_()
        for k, img in enumerate(images):
            h, w = sizes[k]
            batch[k, :, :h, :w] = (img.to(device, dtype, non_blocking=True) - self.image_mean) / self.image_std
        mixed = any(p != (H, W) for p in padded)
        # host-built tables, copied without waiting for the device
        image_sizes = torch.tensor(sizes, dtype=torch.int64).to(device, non_blocking=True)
        padded_sizes = torch.tensor(padded, dtype=torch.int64).to(device, non_blocking=True) if mixed else None
        return ImageBatch(batch, image_sizes, padded_sizes)

    def features(self, images: list[Tensor]) -> tuple[list[Tensor], ImageBatch]:
        """Per-level features ``(B, F, H_l, W_l)`` of the whole padded batch (one backbone call)."""
        batch = self.batch_images(images)
        return self.backbone(batch.tensor), batch

    def prepare_targets(self, targets: Sequence[dict[str, Tensor]], num_images: int) -> Targets:
        """Validate on the host and pad ``targets`` into a :class:`Targets` batch ``(B, G, 4)``.

        Checks run in NumPy on host copies, so targets given on the CPU (the data loader's)
        cost no device-to-host sync; the padded batch is then copied to the model's device.
        """
        if len(targets) != num_images:
            raise ValueError(f"targets: {len(targets)} targets for {num_images} images")
        boxes, labels = [], []
        for k, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"targets[{k}]: needs 'boxes' and 'labels', got keys {sorted(t)}")
            bx = _host_array(t["boxes"], np.float32).reshape(-1, 4)
            lb = _host_array(t["labels"], None).reshape(-1)
            if lb.shape[0] != bx.shape[0]:
                raise ValueError(f"targets[{k}]: {bx.shape[0]} boxes but {lb.shape[0]} labels")
            with np.errstate(invalid="ignore"):
                bad = ~(np.isfinite(bx).all(1) & (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1]))
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"targets[{k}]: degenerate box {j}: {bx[j].tolist()} (need finite x1 < x2 and y1 < y2)"
                )
            if lb.size and (
                not np.issubdtype(lb.dtype, np.integer) or lb.min() < 1 or lb.max() > self.num_classes
            ):
                raise ValueError(
                    f"targets[{k}]: labels must be integers in 1..{self.num_classes}, got {lb.tolist()}"
                )
            boxes.append(bx)
            labels.append(lb.astype(np.int64))
        G = max(b.shape[0] for b in boxes)
        out_boxes = np.zeros((num_images, G, 4), np.float32)
        out_labels = np.zeros((num_images, G), np.int64)
        out_valid = np.zeros((num_images, G), bool)
        for k, (bx, lb) in enumerate(zip(boxes, labels)):
            out_boxes[k, : len(bx)] = bx
            out_labels[k, : len(lb)] = lb
            out_valid[k, : len(bx)] = True
        device = self.image_mean.device
        return Targets(
            *(torch.from_numpy(a).to(device, non_blocking=True) for a in (out_boxes, out_labels, out_valid))
        )

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
            targets: per image ``{"boxes": (G, 4) xyxy, "labels": (G,) int64 in 1..C}``,
                best given on the CPU (checked there, see :meth:`prepare_targets`).
            generator: optional RNG for the anchor/RoI sampling.
        """
        imgs = self._as_list(images)
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode (call model.eval() for inference)")
            gt = self.prepare_targets(targets, len(imgs))
            features, batch = self.features(imgs)
            proposals, proposal_valid, rpn_losses = self.rpn(
                features, batch.image_sizes, batch.padded_sizes, gt, generator
            )
            _, roi_losses = self.roi_heads(features, proposals, proposal_valid, batch.image_sizes, gt, generator)
            return {**rpn_losses, **roi_losses}
        groups: dict[tuple[int, int], list[int]] = {}
        for k, img in enumerate(imgs):
            groups.setdefault((self._padded(img.shape[-2]), self._padded(img.shape[-1])), []).append(k)
        detections: list[dict[str, Tensor]] = [{}] * len(imgs)
        for members in groups.values():
            features, batch = self.features([imgs[k] for k in members])
            proposals, proposal_valid, _ = self.rpn(features, batch.image_sizes)
            found, _ = self.roi_heads(features, proposals, proposal_valid, batch.image_sizes)
            for k, det in zip(members, found):
                detections[k] = det
        return detections

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def fuse_for_inference(self) -> FasterRCNN:
        """Fold every batch norm (``BatchNorm2d`` with its running statistics, or
        ``FrozenBatchNorm2d``) into the convolution before it, in place; returns ``self``.

        Same detections up to rounding, one pass less over every feature map. The model
        is then for inference only: ``train()`` raises and its state dict no longer has
        the norm layers, so save checkpoints before fusing.
        """
        self.eval()
        self.backbone.body = fuse_conv_norm(self.backbone.body)
        self.fused = True
        return self

    def train(self, mode: bool = True) -> FasterRCNN:
        if mode and getattr(self, "fused", False):
            raise RuntimeError(
                "this model was fused for inference (fuse_for_inference); reload the checkpoint to train it"
            )
        return super().train(mode)


def _host_array(value: Tensor | Sequence, dtype: type | None) -> np.ndarray:
    """A NumPy view (or copy) of a target field; a tensor on an accelerator is copied to the host."""
    if isinstance(value, Tensor):
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()  # a sync: pass targets on the CPU to avoid it
        array = value.numpy()
    else:
        array = np.asarray(value)
    return array.astype(dtype, copy=False) if dtype is not None else array


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
        nms=rc.nms,
    )
    oc = config.roi
    roi_heads = RoIHeads(
        pooler=MultiLevelRoIAlign(config.fpn_levels, oc.output_size, oc.sampling_ratio, backend=oc.pooler),
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
    model = FasterRCNN(backbone, rpn, roi_heads, config.image_mean, config.image_std, config=config)
    # 4-D weights channels-last like the activations: a DDP wrapper built afterwards sizes its
    # gradient buckets for this layout (no "grad strides do not match bucket view strides" copies)
    return model.to(memory_format=torch.channels_last)

"""Region proposal network: objectness + box deltas per anchor, losses, proposals.

Shapes: ``B`` images, ``C`` FPN channels, ``H_l, W_l`` level-``l`` map size,
``A`` anchors per location, ``N_l = H_l * W_l * A`` anchors of level ``l``,
``N = sum_l N_l``, ``G`` padded ground-truth boxes, ``P`` proposals per image
(padded), ``K`` candidates kept before NMS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detector.anchors import AnchorGenerator
from detector.boxes import BoxCoder, clip_boxes, remove_small_boxes
from detector.matching import Matcher
from detector.sampling import sample_balanced

__all__ = ["RPN", "RPNHead", "Targets", "pack_per_image"]


@dataclass
class Targets:
    """Padded ground truth of a batch.

    Attributes:
        boxes: ``(B, G, 4)`` xyxy (padding rows are zeros).
        labels: ``(B, G)`` int64 class labels in ``1..C`` (0 on padding).
        valid: ``(B, G)`` bool, which rows are real boxes.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor


class RPNHead(nn.Module):
    """Shared conv stem (run once per level) + 1x1 objectness and delta predictors.

    Args:
        in_channels: FPN channels ``C``.
        stem_channels: output channels of each 3x3 conv + ReLU of the stem (may be empty).
        num_anchors: ``A``.
    """

    def __init__(self, in_channels: int, stem_channels: list[int], num_anchors: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for out in stem_channels:
            layers.append(nn.Conv2d(prev, out, kernel_size=3, padding=1))
            prev = out
        self.stem = nn.ModuleList(layers)
        self.objectness = nn.Conv2d(prev, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(prev, 4 * num_anchors, kernel_size=1)
        for conv in [*layers, self.objectness, self.deltas]:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(
        self, features: list[Tensor], masks: list[Tensor] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``(B, N_l)`` logits and ``(B, N_l, 4)`` deltas.

        ``masks`` (per level ``(B, 1, H_l, W_l)``, 1 inside each image's own padded
        extent) zero the stem output outside it, so that a deeper stem sees exactly
        what it would see for that image alone.
        """
        logits, deltas = [], []
        for level, x in enumerate(features):
            for conv in self.stem:
                x = F.relu(conv(x))
                if masks is not None:
                    x = x * masks[level]
            B, _, H, W = x.shape
            # (B, A, H, W) -> (B, H, W, A) -> (B, H*W*A): location-major like the anchors
            logits.append(self.objectness(x).permute(0, 2, 3, 1).reshape(B, -1))
            # (B, A*4, H, W) -> (B, A, 4, H, W) -> (B, H, W, A, 4) -> (B, H*W*A, 4)
            d = self.deltas(x)
            deltas.append(d.view(B, -1, 4, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, 4))
        return logits, deltas


def pack_per_image(
    image_idx: Tensor, num_images: int, limit: int | None = None
) -> tuple[Tensor, Tensor, int]:
    """Slots for ragged per-image items given in descending-score order.

    Args:
        image_idx: ``(M,)`` image of each item, items sorted by score (descending).
        limit: keep at most this many items per image (the best ones).

    Returns:
        ``order`` ``(M',)`` indices of the kept items grouped by image (score order kept
        inside an image), ``rank`` ``(M',)`` their slot within their image, and the
        padded width ``P = max items per image``.
    """
    order = torch.sort(image_idx, stable=True).indices  # group by image, keep score order
    img = image_idx[order]
    counts = torch.bincount(img, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(img.numel(), device=img.device) - starts[img]
    if limit is not None:
        keep = rank < limit
        order, rank = order[keep], rank[keep]
        counts = counts.clamp(max=limit)
    width = int(counts.max()) if counts.numel() else 0
    return order, rank, width


class RPN(nn.Module):
    """Region proposal network over FPN levels.

    Args:
        head: the :class:`RPNHead`.
        anchor_generator: anchors per level (strides fixed at construction).
        matcher: anchor-to-GT matcher (e.g. ``Matcher(0.6, 0.3, True)``).
        box_coder: anchor delta coder (weights ``(1, 1, 1, 1)``).
        batch_size_per_image, positive_fraction: anchor sampling for the losses.
        pre_nms_topk, post_nms_topk: ``{"train": int, "test": int}`` per-level
            candidates before NMS and proposals per image after it.
        nms_threshold: NMS IoU threshold (per image and level).
        min_size: proposals narrower or shorter than this (pixels) are dropped.
        smooth_l1_beta: beta of the box loss (0 = L1).
    """

    def __init__(
        self,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        matcher: Matcher,
        box_coder: BoxCoder,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: dict[str, int],
        post_nms_topk: dict[str, int],
        nms_threshold: float,
        min_size: float,
        smooth_l1_beta: float,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.matcher = matcher
        self.box_coder = box_coder
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = dict(pre_nms_topk)
        self.post_nms_topk = dict(post_nms_topk)
        self.nms_threshold = nms_threshold
        self.min_size = min_size
        self.smooth_l1_beta = smooth_l1_beta

    def anchor_masks(self, features: list[Tensor], padded_sizes: Tensor | None) -> list[Tensor] | None:
        """Per level ``(B, 1, H_l, W_l)`` float masks of each image's own padded extent (None: all valid)."""
        if padded_sizes is None:
            return None
        masks = []
        for x, stride in zip(features, self.anchor_generator.strides):
            H, W = x.shape[-2:]
            extent = torch.div(padded_sizes, stride, rounding_mode="floor")  # (B, 2)
            rows = torch.arange(H, device=x.device)[None, :] < extent[:, :1]  # (B, H)
            cols = torch.arange(W, device=x.device)[None, :] < extent[:, 1:]  # (B, W)
            masks.append((rows[:, None, :, None] & cols[:, None, None, :]).to(x.dtype))
        return masks

    def forward(
        self,
        features: list[Tensor],
        image_sizes: Tensor,
        padded_sizes: Tensor | None = None,
        targets: Targets | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Proposals (and losses when ``targets`` are given).

        Args:
            features: per level ``(B, C, H_l, W_l)``.
            image_sizes: ``(B, 2)`` true ``(h, w)`` of each image (proposals are clipped to it).
            padded_sizes: ``(B, 2)`` extent of each image's own features in pixels when the
                batch mixes sizes; anchors outside it are ignored (None: all valid).
            targets: padded ground truth; losses are computed when given.

        Returns:
            proposals ``(B, P, 4)``, their validity ``(B, P)`` bool, and a dict
            ``{"loss_rpn_obj", "loss_rpn_box"}`` (empty without targets).
        """
        masks = self.anchor_masks(features, padded_sizes)
        logits, deltas = self.head(features, masks)
        shapes = [tuple(x.shape[-2:]) for x in features]
        # anchors stay in (at least) float32 even when the features are half precision
        dtype = torch.promote_types(features[0].dtype, torch.float32)
        anchors = self.anchor_generator(shapes, device=features[0].device, dtype=dtype)
        num_a = self.anchor_generator.num_anchors_per_location
        # (B, 1, H, W) -> (B, H*W*A): the anchors of a location share its mask
        valid = (
            None if masks is None else [m.flatten(1).bool().repeat_interleave(num_a, dim=1) for m in masks]
        )

        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self.losses(logits, deltas, anchors, valid, targets, generator)
        mode = "train" if self.training else "test"
        with torch.no_grad():
            proposals, proposal_valid = self.proposals(
                [x.detach() for x in logits], [d.detach() for d in deltas], anchors, valid, image_sizes, mode
            )
        return proposals, proposal_valid, losses

    def losses(
        self,
        logits: list[Tensor],
        deltas: list[Tensor],
        anchors: list[Tensor],
        valid: list[Tensor] | None,
        targets: Targets,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """BCE objectness + smooth-L1 delta losses over per-image balanced anchor samples,
        both normalised by the number of sampled anchors."""
        all_anchors = torch.cat(anchors)  # (N, 4)
        matched_idx, labels = self.matcher(all_anchors, targets.boxes, targets.valid)  # (B, N) each
        if valid is not None:
            labels = labels.masked_fill(~torch.cat(valid, dim=1), -1)
        b, i = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction, generator)
        logits_s = torch.cat(logits, dim=1)[b, i]  # (S,)
        sampled_labels = labels[b, i]
        loss_obj = F.binary_cross_entropy_with_logits(
            logits_s, sampled_labels.to(logits_s.dtype), reduction="sum"
        ) / max(b.numel(), 1)
        fg = sampled_labels == 1
        bf, af = b[fg], i[fg]
        target_deltas = self.box_coder.encode(all_anchors[af], targets.boxes[bf, matched_idx[bf, af]])
        pred = torch.cat(deltas, dim=1)[bf, af]  # (S_fg, 4)
        loss_box = F.smooth_l1_loss(pred, target_deltas, beta=self.smooth_l1_beta, reduction="sum") / max(
            b.numel(), 1
        )
        return {"loss_rpn_obj": loss_obj, "loss_rpn_box": loss_box}

    def proposals(
        self,
        logits: list[Tensor],
        deltas: list[Tensor],
        anchors: list[Tensor],
        valid: list[Tensor] | None,
        image_sizes: Tensor,
        mode: str,
    ) -> tuple[Tensor, Tensor]:
        """Per-level top-k, decode, clip, drop small, NMS per (image, level), top-k per image.

        Returns padded proposals ``(B, P, 4)`` sorted by score and their validity ``(B, P)``.
        """
        B = logits[0].shape[0]
        scores, boxes, level_ids = [], [], []
        for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
            if valid is not None:
                lg = lg.masked_fill(~valid[level], float("-inf"))
            k = min(self.pre_nms_topk[mode], lg.shape[1])
            top, idx = lg.topk(k, dim=1)  # (B, k)
            scores.append(top)
            # (B, N_l, 4) gathered at (B, k) -> (B, k, 4)
            d = torch.gather(dl, 1, idx[..., None].expand(-1, -1, 4))
            boxes.append(self.box_coder.decode(d, an[idx]))
            level_ids.append(torch.full((k,), level, device=lg.device))
        scores_t = torch.cat(scores, dim=1)  # (B, K)
        boxes_t = clip_boxes(torch.cat(boxes, dim=1), image_sizes)  # (B, K, 4)
        K = scores_t.shape[1]
        keep = remove_small_boxes(boxes_t, self.min_size) & torch.isfinite(scores_t)  # (B, K)
        # one NMS call for the whole batch: groups are (image, level) pairs
        image_idx = torch.arange(B, device=scores_t.device)[:, None].expand(B, K)
        groups = image_idx * len(logits) + torch.cat(level_ids)[None, :]
        flat = keep.flatten().nonzero().squeeze(1)
        kept = flat[
            batched_nms(
                boxes_t.flatten(0, 1)[flat],
                scores_t.flatten()[flat],
                groups.flatten()[flat],
                self.nms_threshold,
            )
        ]  # (M,) flat indices, by descending score
        order, rank, width = pack_per_image(kept // K, B, self.post_nms_topk[mode])
        kept = kept[order]
        out = boxes_t.new_zeros(B, width, 4)
        out_valid = torch.zeros(B, width, dtype=torch.bool, device=boxes_t.device)
        out[kept // K, rank] = boxes_t.flatten(0, 1)[kept]
        out_valid[kept // K, rank] = True
        return out, out_valid

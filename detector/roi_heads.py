"""Second stage: multi-level RoIAlign, two-FC box head, losses and post-processing.

Shapes: ``B`` images, ``P`` proposals per image (padded), ``G`` ground-truth boxes
(padded), ``T`` sampled RoIs per image, ``R`` RoIs in the batch (flat), ``C`` foreground
classes, ``F`` FPN channels, ``S = output_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detector.boxes import BoxCoder, clip_boxes, remove_small_boxes
from detector.matching import Matcher
from detector.pooling import MultiLevelRoIAlign
from detector.sampling import sample_balanced
from detector.selection import pack_per_image
from detector.structures import FOREGROUND, IGNORE, Targets

__all__ = ["BoxHead", "RoIHeads"]


class BoxHead(nn.Module):
    """Two FC layers (torchvision's ``TwoMLPHead``) + class logits and class-specific deltas.

    Takes ``(R, F, S, S)`` RoI features and returns ``(R, C + 1)`` logits (column 0 =
    background) and ``(R, C * 4)`` deltas. ``fc6`` reads the features channels-last,
    in ``(S, S, F)`` order: the pooler's output is channels-last in memory, so this
    flattening is free (torchvision's ``fc6`` weight ``w`` maps to
    ``w.view(D, F, S, S).permute(0, 2, 3, 1).reshape(D, -1)``).
    """

    def __init__(self, in_channels: int, resolution: int, head_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution**2, head_dim)
        self.fc7 = nn.Linear(head_dim, head_dim)
        self.cls_score = nn.Linear(head_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(head_dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc6(x.permute(0, 2, 3, 1).flatten(1)))  # (R, F, S, S) -> (R, S*S*F)
        x = F.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Samples RoIs from proposals (+ GT) in training, pools, classifies and refines boxes.

    Args:
        pooler: the :class:`MultiLevelRoIAlign`.
        box_head: the :class:`BoxHead`.
        matcher: proposal-to-GT matcher (``Matcher(0.5, 0.5)``).
        box_coder: RoI delta coder (weights ``(10, 10, 5, 5)``).
        num_classes: ``C``.
        batch_size_per_image, positive_fraction: RoI sampling.
        smooth_l1_beta: beta of the box loss.
        score_threshold, nms_threshold, detections_per_image: inference post-processing.
        min_size: detections smaller than this (pixels) are dropped.
    """

    def __init__(
        self,
        pooler: MultiLevelRoIAlign,
        box_head: BoxHead,
        matcher: Matcher,
        box_coder: BoxCoder,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        smooth_l1_beta: float,
        score_threshold: float,
        nms_threshold: float,
        detections_per_image: int,
        min_size: float = 1e-2,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.matcher = matcher
        self.box_coder = box_coder
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.smooth_l1_beta = smooth_l1_beta
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.min_size = min_size

    def forward(
        self,
        features: list[Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        image_sizes: Tensor,
        targets: Targets | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Losses (with ``targets``) or detections (without).

        Args:
            features: per level ``(B, F, H_l, W_l)``.
            proposals: ``(B, P, 4)``; ``proposal_valid`` ``(B, P)``.
            image_sizes: ``(B, 2)`` true ``(h, w)`` per image.

        Returns:
            ``(detections, losses)``: with targets ``([], {"loss_cls", "loss_box"})``;
            without, one ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}`` per image and ``{}``.
        """
        if targets is not None:
            return [], self.losses(features, proposals, proposal_valid, targets, generator)
        return self.detect(features, proposals, proposal_valid, image_sizes), {}

    def losses(
        self,
        features: list[Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        targets: Targets,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Cross-entropy + smooth-L1 (true class only) over sampled RoIs, both / number of RoIs.

        Fixed shapes throughout: ``T`` RoI slots per image, a mask says which hold a sample.
        """
        targets = targets.at_least_one()
        # ground-truth boxes join the proposals: (B, P + G, 4)
        boxes = torch.cat([proposals, targets.boxes.to(proposals.dtype)], dim=1)
        valid = torch.cat([proposal_valid, targets.valid], dim=1)
        matched_idx, labels = self.matcher(boxes, targets.boxes, targets.valid)  # (B, P + G)
        labels = labels.masked_fill(~valid, IGNORE)
        index, mask = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction, generator)
        B, T = index.shape
        rois = boxes.gather(1, index[..., None].expand(-1, -1, 4))  # (B, T, 4)
        fg = (labels.gather(1, index) == FOREGROUND) & mask  # (B, T)
        matched = matched_idx.gather(1, index)  # (B, T)
        cls_target = torch.where(fg, targets.labels.gather(1, matched), 0)  # (B, T): 0 = background
        batch_idx = torch.arange(B, device=boxes.device)[:, None].expand(B, T)
        logits, deltas = self.box_head(self.pooler(features, rois.flatten(0, 1), batch_idx.flatten()))
        num = mask.sum().clamp(min=1)
        loss_cls = F.cross_entropy(logits, cls_target.flatten(), reduction="none")  # (B*T,)
        loss_cls = (loss_cls * mask.flatten()).sum() / num
        # (B*T, C*4) -> (B*T, C, 4), then each RoI's own class (background slots: class 1, masked)
        cls_col = (cls_target.flatten() - 1).clamp(min=0)[:, None, None].expand(-1, 1, 4)
        pred = deltas.view(B * T, self.num_classes, 4).gather(1, cls_col).squeeze(1)  # (B*T, 4)
        gt = targets.boxes.gather(1, matched[..., None].expand(-1, -1, 4))  # (B, T, 4)
        # other slots (background, unused: possibly a zero-size padding box) encode a unit box
        # against itself: zero, finite deltas that the mask then drops
        unit = rois.new_zeros(4)
        unit[2:] = 1.0  # (4,) the box [0, 0, 1, 1], made on the device
        target_deltas = self.box_coder.encode(
            torch.where(fg[..., None], rois, unit), torch.where(fg[..., None], gt, unit)
        ).flatten(0, 1)
        loss_box = F.smooth_l1_loss(pred, target_deltas.to(pred.dtype), beta=self.smooth_l1_beta,
                                    reduction="none").sum(-1)
        loss_box = (loss_box * fg.flatten()).sum() / num
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    @torch.no_grad()
    def detect(
        self,
        features: list[Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        image_sizes: Tensor,
    ) -> list[dict[str, Tensor]]:
        """Softmax scores, per-class decoding, clip, threshold, class-wise NMS, top detections.

        Every proposal slot is pooled (fixed shapes; invalid slots score nothing); the
        score-threshold compaction, torchvision's ``batched_nms`` (class-wise, per image) and
        the split per image are data-dependent.
        """
        B, P = proposal_valid.shape
        C = self.num_classes
        rois = proposals.reshape(B * P, 4)  # (R, 4)
        b = torch.arange(B, device=rois.device)[:, None].expand(B, P).reshape(-1)  # (R,)
        logits, deltas = self.box_head(self.pooler(features, rois, b))
        scores = F.softmax(logits.float(), dim=-1)[:, 1:]  # (R, C)
        scores = scores.masked_fill(~proposal_valid.reshape(-1, 1), 0.0)
        # (R, C*4) -> (R, C, 4) decoded against (R, 1, 4) proposals
        boxes = self.box_coder.decode(deltas.view(-1, C, 4), rois[:, None, :])
        boxes = clip_boxes(boxes, image_sizes[b])  # per-RoI image size (R, 2) broadcast over C
        labels = torch.arange(1, C + 1, device=rois.device)[None, :].expand_as(scores)
        image = b[:, None].expand_as(scores)
        # (R, C, ...) -> (R*C, ...)
        boxes, scores, labels, image = (
            boxes.reshape(-1, 4),
            scores.reshape(-1),
            labels.reshape(-1),
            image.reshape(-1),
        )
        keep = ((scores > self.score_threshold) & remove_small_boxes(boxes, self.min_size)).nonzero().squeeze(1)
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        kept = batched_nms(boxes, scores, image * (C + 1) + labels, self.nms_threshold)  # descending score
        index, valid = pack_per_image(image[kept], torch.ones_like(kept, dtype=torch.bool), B,
                                      self.detections_per_image)  # (B, D): valid slots first
        counts = valid.sum(1).tolist()
        if kept.numel():  # each image's detections, by descending score
            kept = kept[torch.cat([index[k, :n] for k, n in enumerate(counts)])]
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
        return [
            {"boxes": bx, "scores": sc, "labels": lb}
            for bx, sc, lb in zip(boxes.split(counts), scores.split(counts), labels.split(counts))
        ]

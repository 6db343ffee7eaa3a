"""Region proposal network: objectness + box deltas per anchor, losses, proposals.

Shapes: ``B`` images, ``C`` FPN channels, ``H_l, W_l`` level-``l`` map size,
``A`` anchors per location, ``N_l = H_l * W_l * A`` anchors of level ``l``,
``N = sum_l N_l``, ``G`` padded ground-truth boxes, ``S`` sampled anchors per image,
``P`` proposals per image (padded to ``post_nms_topk``), ``K`` candidates kept before NMS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.boxes import BoxCoder, clip_boxes, remove_small_boxes
from detector.matching import Matcher
from detector.nms import nms_matrix, nms_per_group
from detector.sampling import sample_balanced
from detector.structures import FOREGROUND, IGNORE, Targets

__all__ = ["RPN", "RPNHead"]


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

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``(B, N_l)`` logits and ``(B, N_l, 4)`` deltas."""
        logits, deltas = [], []
        for x in features:
            for conv in self.stem:
                x = F.relu(conv(x))
            B, _, H, W = x.shape
            # (B, A, H, W) -> (B, H, W, A) -> (B, H*W*A): location-major like the anchors
            logits.append(self.objectness(x).permute(0, 2, 3, 1).reshape(B, -1))
            # (B, A*4, H, W) -> (B, A, 4, H, W) -> (B, H, W, A, 4) -> (B, H*W*A, 4)
            d = self.deltas(x)
            deltas.append(d.view(B, -1, 4, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, 4))
        return logits, deltas


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
        nms: ``"matrix"`` (:func:`~detector.nms.nms_matrix`: all groups at once, no sync but a
            convergence check), ``"per_group"`` (torchvision's ``nms`` per group) or ``"auto"``
            (matrix on CUDA, per group elsewhere).
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
        nms: str = "auto",
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
        if nms not in ("auto", "matrix", "per_group"):
            raise ValueError(f"nms must be auto, matrix or per_group, got {nms!r}")
        self.nms_impl = nms

    def nms(self, boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
        """``(G, K)`` kept candidates of ``(G, K)`` score-sorted groups (see ``nms_impl``)."""
        impl = self.nms_impl
        if impl == "auto":
            impl = "matrix" if boxes.device.type == "cuda" else "per_group"
        return (nms_matrix if impl == "matrix" else nms_per_group)(boxes, scores, valid, iou_threshold)

    def anchor_valid(self, features: list[Tensor], padded_sizes: Tensor | None) -> list[Tensor] | None:
        """Per level ``(B, N_l)`` bool: anchors inside each image's own padded extent (None: all)."""
        if padded_sizes is None:
            return None
        num_a = self.anchor_generator.num_anchors_per_location
        valid = []
        for x, stride in zip(features, self.anchor_generator.strides):
            H, W = x.shape[-2:]
            extent = torch.div(padded_sizes, stride, rounding_mode="floor")  # (B, 2)
            rows = torch.arange(H, device=x.device)[None, :] < extent[:, :1]  # (B, H)
            cols = torch.arange(W, device=x.device)[None, :] < extent[:, 1:]  # (B, W)
            # (B, H, W) -> (B, H, W, A) -> (B, H*W*A): the anchors of a location share its extent
            inside = rows[:, :, None] & cols[:, None, :]
            valid.append(inside[..., None].expand(-1, -1, -1, num_a).flatten(1))
        return valid

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
            features: per level ``(B, C, H_l, W_l)`` of a padded batch.
            image_sizes: ``(B, 2)`` true ``(h, w)`` of each image (proposals are clipped to it).
            padded_sizes: ``(B, 2)`` each image's own padded size in pixels when the batch
                mixes sizes; anchors beyond it are ignored (None: all valid).
            targets: padded ground truth; losses are computed when given.

        Returns:
            proposals ``(B, P, 4)`` with ``P = post_nms_topk`` of the mode, their validity
            ``(B, P)`` bool (valid slots first, by descending score), and a dict
            ``{"loss_rpn_obj", "loss_rpn_box"}`` (empty without targets).
        """
        logits, deltas = self.head(features)
        shapes = [tuple(x.shape[-2:]) for x in features]
        # anchors stay in (at least) float32 even when the features are half precision
        dtype = torch.promote_types(features[0].dtype, torch.float32)
        anchors = self.anchor_generator(shapes, device=features[0].device, dtype=dtype)
        valid = self.anchor_valid(features, padded_sizes)

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
        both normalised by the number of sampled anchors (fixed shapes, masked sums)."""
        targets = targets.at_least_one()
        all_anchors = torch.cat(anchors)  # (N, 4)
        matched_idx, labels = self.matcher(all_anchors, targets.boxes, targets.valid)  # (B, N) each
        if valid is not None:
            labels = labels.masked_fill(~torch.cat(valid, dim=1), IGNORE)
        index, mask = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction, generator)
        num = mask.sum().clamp(min=1)  # sampled anchors in the batch
        logits_s = torch.cat(logits, dim=1).gather(1, index)  # (B, S)
        fg = (labels.gather(1, index) == FOREGROUND) & mask  # (B, S)
        loss_obj = F.binary_cross_entropy_with_logits(logits_s, fg.to(logits_s.dtype), reduction="none")
        loss_obj = (loss_obj * mask).sum() / num
        anchors_s = all_anchors[index]  # (B, S, 4)
        gt_s = targets.boxes.gather(1, matched_idx.gather(1, index)[..., None].expand(-1, -1, 4))  # (B, S, 4)
        # non-foreground slots target their own anchor (zero deltas, finite), then are masked out
        target_deltas = self.box_coder.encode(anchors_s, torch.where(fg[..., None], gt_s, anchors_s))
        pred = torch.cat(deltas, dim=1).gather(1, index[..., None].expand(-1, -1, 4))  # (B, S, 4)
        loss_box = F.smooth_l1_loss(pred, target_deltas.to(pred.dtype), beta=self.smooth_l1_beta,
                                    reduction="none").sum(-1)
        loss_box = (loss_box * fg).sum() / num
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

        Returns proposals ``(B, P, 4)`` sorted by score and their validity ``(B, P)``,
        ``P = post_nms_topk[mode]``. Fixed shapes throughout: the (image, level) groups
        are padded to the largest ``k`` and go through one batched NMS.
        """
        B, L = logits[0].shape[0], len(logits)
        k_max = max(min(self.pre_nms_topk[mode], lg.shape[1]) for lg in logits)
        scores = logits[0].new_full((B, L, k_max), float("-inf"), dtype=torch.float32)
        boxes = scores.new_zeros(B, L, k_max, 4)
        for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
            if valid is not None:
                lg = lg.masked_fill(~valid[level], float("-inf"))
            k = min(self.pre_nms_topk[mode], lg.shape[1])
            top, idx = lg.topk(k, dim=1)  # (B, k), sorted by descending score
            scores[:, level, :k] = top
            # (B, N_l, 4) gathered at (B, k) -> (B, k, 4)
            d = torch.gather(dl, 1, idx[..., None].expand(-1, -1, 4))
            boxes[:, level, :k] = self.box_coder.decode(d, an[idx])
        boxes = clip_boxes(boxes.view(B, L * k_max, 4), image_sizes).view(B, L, k_max, 4)
        ok = remove_small_boxes(boxes, self.min_size) & torch.isfinite(scores)  # (B, L, k)
        # (B, L, k) -> (B*L, k): one group per (image, level), each still sorted by score
        keep = self.nms(boxes.flatten(0, 1), scores.flatten(0, 1), ok.flatten(0, 1), self.nms_threshold)
        # the best P kept candidates of each image over all its levels
        kept_scores = scores.masked_fill(~keep.view(B, L, k_max), float("-inf")).view(B, -1)  # (B, L*k)
        P = min(self.post_nms_topk[mode], L * k_max)
        top, idx = kept_scores.topk(P, dim=1)  # (B, P)
        out_valid = torch.isfinite(top)
        out = torch.gather(boxes.view(B, -1, 4), 1, idx[..., None].expand(-1, -1, 4))
        return torch.where(out_valid[..., None], out, 0.0), out_valid

"""Non-maximum suppression of many fixed-size groups at once (the RPN's (image, level) groups).

Shapes: ``G`` groups, ``K`` candidates per group, sorted by descending score.

Two exact implementations of greedy NMS (a box is dropped when its IoU with a kept box of
higher score is ``> iou_threshold``, as ``torchvision.ops.nms``):

* :func:`nms_per_group`: ``torchvision.ops.nms`` on each group (fast on the CPU; on CUDA
  every call waits for the device).
* :func:`nms_matrix`: all groups together with tensor ops and no data-dependent shapes
  (Cluster-NMS, Zheng et al., 2021): with ``S[i, j]`` "``i`` outranks and overlaps ``j``",
  the kept set is the unique fixed point of ``keep[j] = not any_i(keep[i] and S[i, j])``
  (unique because ``S`` is strictly upper triangular, so ``keep[j]`` depends only on
  ``keep[:j]``). Iterating from "all kept" fixes at least one more candidate per step;
  in practice a handful of steps converge, and the host checks every chunk of groups at
  once after each round of ``check_every`` steps (one sync per round, usually one in all).
  torchvision's CUDA ``nms`` instead copies an ``M x M/64`` bit mask to the host per call
  (650 MB for one call over a batch's 72k RPN candidates), so one call per batch is not an
  option there either.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["nms_matrix", "nms_per_group"]


def nms_per_group(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of each group with ``torchvision.ops.nms``.

    Args:
        boxes: ``(G, K, 4)`` xyxy; ``scores``: ``(G, K)``; ``valid``: ``(G, K)`` bool, candidates
            that take part (others are never kept and suppress nothing).

    Returns:
        ``(G, K)`` bool, the kept candidates.
    """
    G, K = scores.shape
    keep = torch.zeros(G, K, dtype=torch.bool, device=scores.device)
    # invalid candidates: a zero box overlaps nothing, -inf sorts last
    boxes = torch.where(valid[..., None], boxes, 0.0).float()
    scores = scores.float().masked_fill(~valid, float("-inf"))
    for g in range(G):
        keep[g, nms(boxes[g], scores[g], iou_threshold)] = True
    return keep & valid


def _suppression(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """``(G, K, K)`` bool: ``i < j`` (``i`` outranks ``j``), both valid, IoU ``> iou_threshold``."""
    x1, y1, x2, y2 = boxes.float().unbind(-1)  # (G, K) each
    area = (x2 - x1) * (y2 - y1)
    # pairwise intersection, built in place to keep to a few (G, K, K) temporaries
    w = torch.minimum(x2[:, :, None], x2[:, None, :]).sub_(torch.maximum(x1[:, :, None], x1[:, None, :]))
    h = torch.minimum(y2[:, :, None], y2[:, None, :]).sub_(torch.maximum(y1[:, :, None], y1[:, None, :]))
    inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
    del h
    union = (area[:, :, None] + area[:, None, :]).sub_(inter)
    # the same float32 formula as torchvision's kernels: inter / union > threshold
    above = inter.div_(union).gt_(iou_threshold).bool()
    del union
    K = boxes.shape[1]
    outranks = torch.ones(K, K, dtype=torch.bool, device=boxes.device).triu_(diagonal=1)
    return above & outranks & valid[:, :, None] & valid[:, None, :]


def nms_matrix(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float,
               max_chunk_elements: int = 1 << 25, check_every: int = 16) -> Tensor:
    """Greedy NMS of every group at once, without data-dependent shapes.

    Args:
        boxes: ``(G, K, 4)`` xyxy, each group sorted by descending ``scores`` ``(G, K)``
            (the scores only define that order; ``topk`` output already is).
        valid: ``(G, K)`` bool, candidates that take part.
        max_chunk_elements: groups are processed in chunks of at most this many ``K x K``
            entries (memory: a few such temporaries).
        check_every: fixed-point steps of every chunk between the host's convergence checks.

    Returns:
        ``(G, K)`` bool, the kept candidates (equal to :func:`nms_per_group`).
    """
    G, K = valid.shape
    keep = valid.clone()  # the iteration starts from "every valid candidate kept"
    if G == 0 or K == 0:
        return keep
    step = max(1, max_chunk_elements // (K * K))
    chunks = [slice(s, s + step) for s in range(0, G, step)]
    # one chunk keeps its suppression matrix between rounds; several rebuild theirs (rarely needed)
    only = _suppression(boxes, valid, iou_threshold) if len(chunks) == 1 else None
    while chunks:
        moving = []
        for chunk in chunks:
            suppress = only if only is not None else _suppression(boxes[chunk], valid[chunk], iou_threshold)
            current = keep[chunk]  # (g, K), where the previous round left it
            for _ in range(check_every):
                previous = current
                # j survives unless a currently kept i outranks and overlaps it: (g, K, 1) & (g, K, K)
                current = valid[chunk] & ~(current[:, :, None] & suppress).any(dim=1)
            keep[chunk] = current
            moving.append((current != previous).any())
        # one sync per round for all chunks: those not at their fixed point (the greedy result) go on
        chunks = [chunk for chunk, m in zip(chunks, torch.stack(moving).tolist()) if m]
    return keep

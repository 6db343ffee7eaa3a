"""Precise batch-norm statistics (detectron2's ``PreciseBN`` hook; Wu & Johnson, 2021).

A from-scratch trunk trains with batch norm over each worker's few images; its running
statistics are an exponential average taken while the weights were still changing. Before the
final evaluation and checkpoint, :func:`recompute_bn_stats` replaces them with the plain average
of batch statistics of the *final* weights over many training images, in larger batches
than a worker trains on. On the default run this lifted val AP50 by ~0.06 (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["recompute_bn_stats"]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, dataset: Any, *, num_images: int, batch_size: int = 8) -> int:
    """Recompute every trainable ``BatchNorm2d``'s running mean/var of ``model``'s backbone.

    ``model`` is a bare detector (not DDP-wrapped) with a ``features(list_of_images)`` method;
    ``dataset`` yields ``(image, target)`` like the training dataset. Uses the first
    ``num_images`` images (all if fewer). Returns the number of images used (0: no batch norm).
    The model's train/eval mode and each layer's momentum are restored.
    """
    from pipeline.data.dataset import collate_detection

    layers = [m for m in model.modules() if type(m) is nn.BatchNorm2d and m.track_running_stats]
    if not layers or num_images <= 0:
        return 0
    count = min(num_images, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(count)), batch_size=batch_size,
                                         collate_fn=collate_detection)
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    device = next(model.parameters()).device
    try:
        for images, _ in loader:
            model.features([img.to(device) for img in images])
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return count

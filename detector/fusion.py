"""Fold batch norm into the convolution before it, for inference.

``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` is a convolution with weights
``w * s`` and bias ``(b - mean) * s + beta`` where ``s = gamma / sqrt(var + eps)``
(as ``torch.nn.utils.fusion.fuse_conv_bn_eval``). Handles trainable ``BatchNorm2d``
(its running statistics) and torchvision's ``FrozenBatchNorm2d`` (pretrained trunks),
in traced graphs (``create_feature_extractor`` bodies) and in ``nn.Sequential`` pairs
(torchvision's ``Conv2dNormActivation``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["fold_conv_norm", "fuse_conv_norm"]


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, FrozenBatchNorm2d):
        return True
    return type(module) is nn.BatchNorm2d and module.track_running_stats and module.running_mean is not None


@torch.no_grad()
def fold_conv_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d | FrozenBatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` equal to ``norm(conv(x))`` in eval mode (same memory format)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)  # (C_out,)
    fused = copy.deepcopy(conv)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)
    fused.weight.requires_grad_(False)
    return fused


def fuse_conv_norm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with every (conv, norm) pair folded into one conv.

    A pair is a norm whose only input is a ``Conv2d`` used by nothing else: a graph node
    following a conv node in a ``torch.fx.GraphModule``, or the next entry of an
    ``nn.Sequential``. Other layers are kept as they are.
    """
    module = copy.deepcopy(module).eval()
    if isinstance(module, torch.fx.GraphModule):
        _fuse_graph(module)
    for seq in list(module.modules()):
        if isinstance(seq, nn.Sequential):
            names = list(seq._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = seq._modules[first], seq._modules[second]
                if isinstance(conv, nn.Conv2d) and _is_norm(norm):
                    seq._modules[first] = fold_conv_norm(conv, norm)
                    seq._modules[second] = nn.Identity()
    return module


def _fuse_graph(gm: torch.fx.GraphModule) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _is_norm(modules[node.target]) or len(node.args) != 1:
            continue
        prev = node.args[0]
        if not (isinstance(prev, torch.fx.Node) and prev.op == "call_module"
                and isinstance(modules.get(prev.target), nn.Conv2d) and len(prev.users) == 1):
            continue
        fused = fold_conv_norm(modules[prev.target], modules[node.target])
        parent, _, name = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()

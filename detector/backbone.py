"""Backbone (torchvision classification trunk) + feature pyramid network.

Shapes: ``B`` images, ``C`` FPN channels, ``H_l, W_l`` = input size / ``2**l``.

Normalisation layers: with pretrained weights, batch norm is frozen
(``FrozenBatchNorm2d``: the ImageNet statistics stay fixed, which is what small
per-worker batches of 2-4 images need). From scratch there are no statistics to
keep, so plain ``BatchNorm2d`` is used: it is what lets a randomly initialised
trunk learn quickly (its statistics track the training data; switch the model to
``eval()`` for inference as usual).

Speed: ``FasterRCNN.fuse_for_inference`` folds the batch norms into the convolutions
(:mod:`detector.fusion`); ``FrozenBatchNorm2d`` stays one traced module for that.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import RegNet
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.regnet import BlockParams
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = ["Backbone", "BackboneSpec", "SPECS", "build_backbone"]


@dataclass(frozen=True)
class BackboneSpec:
    """Where a torchvision trunk's stride-4..32 outputs (c2..c5) live.

    ``stages`` lists the module-name prefixes of the 5 stages (stem, then the
    stages ending in c2..c5), used to freeze the bottom ones.
    """

    nodes: tuple[str, str, str, str]
    channels: tuple[int, int, int, int]
    stages: tuple[tuple[str, ...], ...]
    bn_eps: float = 1e-5


SPECS: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        ("layer1", "layer2", "layer3", "layer4"),
        (64, 128, 256, 512),
        (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)),
    ),
    "resnet50": BackboneSpec(
        ("layer1", "layer2", "layer3", "layer4"),
        (256, 512, 1024, 2048),
        (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)),
    ),
    "regnet_x_200mf": BackboneSpec(
        tuple(f"trunk_output.block{i}" for i in range(1, 5)),  # type: ignore[arg-type]
        (24, 56, 152, 368),
        (("stem",),) + tuple((f"trunk_output.block{i}",) for i in range(1, 5)),
    ),
    "regnet_x_400mf": BackboneSpec(
        tuple(f"trunk_output.block{i}" for i in range(1, 5)),  # type: ignore[arg-type]
        (32, 64, 160, 400),
        (("stem",),) + tuple((f"trunk_output.block{i}",) for i in range(1, 5)),
    ),
    "mobilenet_v3_large": BackboneSpec(
        ("features.3", "features.6", "features.12", "features.16"),
        (24, 40, 112, 960),
        (
            ("features.0",),
            tuple(f"features.{i}" for i in range(1, 4)),
            tuple(f"features.{i}" for i in range(4, 7)),
            tuple(f"features.{i}" for i in range(7, 13)),
            tuple(f"features.{i}" for i in range(13, 17)),
        ),
        bn_eps=1e-3,
    ),
}


def regnet_x_200mf(**kwargs) -> RegNet:
    """RegNetX-200MF (Radosavovic et al., 2020; pycls ``RegNetX-200MF.yaml``) built with torchvision's
    :class:`~torchvision.models.RegNet`: depths 1-1-4-7, widths 24-56-152-368, group width 8.

    Torchvision ships no weights for it (``pretrained`` must be a local state-dict file). At about
    half the compute of ``regnet_x_400mf`` it is the quick from-scratch trunk of the default
    pipeline run on a CPU.
    """
    params = BlockParams.from_init_params(depth=13, w_0=24, w_a=36.44, w_m=2.49, group_width=8)
    return RegNet(params, **kwargs)


_BUILDERS = {"regnet_x_200mf": regnet_x_200mf}  # trunks torchvision has no builder for


def _load_weights(name: str, model: nn.Module, pretrained: str) -> None:
    """Load ``pretrained`` (a torchvision weights name or a local state-dict path) into ``model``."""
    path = Path(pretrained).expanduser()
    if path.suffix in (".pth", ".pt") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model.load_state_dict(state)
        return
    if name in _BUILDERS:
        raise ValueError(f"pretrained: torchvision has no weights for {name}; {pretrained!r} is not a file "
                         f"(pass the path of a local state-dict .pth file, or null to train from scratch)")
    try:
        enum = torchvision.models.get_model_weights(name)
        weights = enum.DEFAULT if pretrained == "DEFAULT" else torchvision.models.get_weight(pretrained)
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(
            f"pretrained: {pretrained!r} is neither a file nor a torchvision weights name for {name} "
            f"(e.g. 'DEFAULT' or one of {[str(w) for w in torchvision.models.get_model_weights(name)]})"
        ) from err
    try:
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as err:  # offline: URLError, OSError, ...
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"could not get pretrained weights {weights} ({weights.url}): {err}. On a machine with internet "
            f"access download that file, then either copy it into the torch hub cache {hub_dir} (or set "
            f"TORCH_HOME) or pass its path as pretrained: /path/to/{Path(weights.url).name}"
        ) from err
    model.load_state_dict(state)


def _trunk(name: str, pretrained: str | None, load: bool = True) -> nn.Module:
    spec = SPECS[name]
    if pretrained is None:
        norm = None  # torchvision's default: trainable BatchNorm2d
    else:
        norm = functools.partial(FrozenBatchNorm2d, eps=spec.bn_eps)
    kwargs = {} if norm is None else {"norm_layer": norm}
    model = _BUILDERS[name](**kwargs) if name in _BUILDERS else torchvision.models.get_model(name, weights=None, **kwargs)
    if pretrained is not None and load:
        _load_weights(name, model, pretrained)
    return model


class Backbone(nn.Module):
    """Trunk + FPN returning one ``(B, C, H_l, W_l)`` map per level of ``levels``.

    Args:
        body: module returning a dict ``{"c2".."c5": Tensor}`` (a subset is fine).
        in_channels: channels of the body outputs used, in level order.
        levels: FPN levels, e.g. ``[3, 4, 5]`` or ``[3, 4, 5, 6]`` (p6 = max-pool of the top level).
        out_channels: FPN channels ``C``.
    """

    def __init__(self, body: nn.Module, in_channels: list[int], levels: list[int], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.levels = list(levels)
        self.strides = [2**level for level in levels]
        self.out_channels = out_channels
        self.body_levels = [level for level in levels if level <= 5]
        extra = LastLevelMaxPool() if 6 in levels else None
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised images -> per-level ``(B, C, H / s_l, W / s_l)``."""
        feats = self.body(images)
        feats = OrderedDict((f"c{level}", feats[f"c{level}"]) for level in self.body_levels)
        return list(self.fpn(feats).values())


def build_backbone(
    name: str,
    levels: list[int],
    out_channels: int,
    pretrained: str | None = None,
    trainable_layers: int = 3,
    load_pretrained: bool = True,
) -> Backbone:
    """Torchvision trunk ``name`` + FPN on ``levels`` (see :class:`Backbone`).

    ``trainable_layers`` (0..5) applies only with pretrained weights: the bottom
    ``5 - trainable_layers`` stages are frozen. From scratch everything trains.
    """
    if name not in SPECS:
        raise ValueError(f"backbone: unknown backbone {name!r} (known: {', '.join(SPECS)})")
    spec = SPECS[name]
    trunk = _trunk(name, pretrained, load_pretrained)
    if pretrained is not None:
        frozen = [prefix for stage in spec.stages[: 5 - trainable_layers] for prefix in stage]
        for param_name, param in trunk.named_parameters():
            if any(param_name == p or param_name.startswith(p + ".") for p in frozen):
                param.requires_grad_(False)
    body_levels = [level for level in levels if level <= 5]
    nodes = {spec.nodes[level - 2]: f"c{level}" for level in body_levels}
    # frozen batch norm stays one graph node, so fuse_for_inference can fold it into its conv
    body = create_feature_extractor(trunk, return_nodes=nodes,
                                    tracer_kwargs={"leaf_modules": [FrozenBatchNorm2d]})
    in_channels = [spec.channels[level - 2] for level in body_levels]
    return Backbone(body, in_channels, list(levels), out_channels)

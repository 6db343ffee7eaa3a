"""Typed, validated configuration of the detector.

Field names equal the keys of the ``model:`` section of ``params.yaml`` (plus
``num_classes`` and ``class_names``, which come from the data). ``from_dict``
checks unknown keys and types and names the full dotted key in its errors;
``__post_init__`` checks values, so a config built in code is validated too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from detector import typed

__all__ = ["AnchorConfig", "DetectorConfig", "RPNConfig", "RoIConfig", "BACKBONES", "FPN_LEVELS"]

BACKBONES = ("regnet_x_200mf", "regnet_x_400mf", "resnet18", "resnet50", "mobilenet_v3_large")
FPN_LEVELS = (2, 3, 4, 5, 6)


def _fraction(name: str, value: float, *, zero_ok: bool = False) -> None:
    lo_ok = value >= 0 if zero_ok else value > 0
    if not (lo_ok and value <= 1):
        interval = "[0, 1]" if zero_ok else "(0, 1]"
        raise ValueError(f"{name}: must be in {interval}, got {value}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value}")


def _weights(name: str, value: list[float]) -> None:
    if len(value) != 4 or not all(w > 0 for w in value):
        raise ValueError(f"{name}: must be 4 positive numbers, got {value}")


class _Section:
    """Mixin: ``from_dict`` with key/type checking (:mod:`detector.typed`), ``to_dict``."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "", **extra: Any):
        """Build from a plain dict; ``extra`` are passed as they are. Errors name ``prefix.key``."""
        return typed.from_dict(cls, d, key=prefix, fixed=extra)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class AnchorConfig(_Section):
    """Anchors: side ``stride * scale``, ``aspect_ratio = height / width``.

    ``scales`` is one list for all FPN levels or one list per level (same length each).
    """

    scales: list[float] | list[list[float]] = field(default_factory=lambda: [8.0])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])

    def __post_init__(self) -> None:
        if not self.scales:
            raise ValueError(f"scales: must not be empty, got {self.scales}")
        nested = [isinstance(s, list | tuple) for s in self.scales]
        if any(nested) and not all(nested):
            raise ValueError(f"scales: mix of numbers and lists: {self.scales}")
        per_level = self.scales if all(nested) else [self.scales]
        if len({len(level) for level in per_level}) != 1 or not per_level[0]:  # type: ignore[arg-type]
            raise ValueError(
                f"scales: every level needs the same, non-zero number of scales, got {self.scales}"
            )
        for level in per_level:
            for s in level:  # type: ignore[union-attr]
                _positive("scales", s)
        if not self.aspect_ratios:
            raise ValueError(f"aspect_ratios: must not be empty, got {self.aspect_ratios}")
        for r in self.aspect_ratios:
            _positive("aspect_ratios", r)

    @property
    def per_level(self) -> bool:
        return isinstance(self.scales[0], list | tuple)


@dataclass
class RPNConfig(_Section):
    """Region proposal network. ``stem_channels: null`` means ``[fpn_channels]``.

    ``nms``: how the (image, level) groups are suppressed: ``matrix`` (all at once, one
    device-to-host sync for its convergence check: the CUDA default), ``per_group``
    (torchvision's ``nms`` per group, a sync each on CUDA: the CPU default) or ``auto``. Both
    give the same proposals.
    """

    iou_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.6])
    allow_low_quality_matches: bool = True
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    nms_threshold: float = 0.7
    nms: str = "auto"
    pre_nms_topk_train: int = 2000
    post_nms_topk_train: int = 1000
    pre_nms_topk_test: int = 1000
    post_nms_topk_test: int = 500
    min_size: float = 1.0
    stem_channels: list[int] | None = None
    box_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    smooth_l1_beta: float = 1.0 / 9

    def __post_init__(self) -> None:
        if len(self.iou_thresholds) != 2:
            raise ValueError(f"iou_thresholds: expected [low, high], got {self.iou_thresholds}")
        low, high = self.iou_thresholds
        for t in (low, high):
            _fraction("iou_thresholds", t, zero_ok=True)
        if low > high:
            raise ValueError(f"iou_thresholds: low ({low}) must be < high ({high})")
        for name in ("batch_size_per_image", "pre_nms_topk_train", "post_nms_topk_train"):
            _positive(name, getattr(self, name))
        for name in ("pre_nms_topk_test", "post_nms_topk_test"):
            _positive(name, getattr(self, name))
        _fraction("positive_fraction", self.positive_fraction)
        _fraction("nms_threshold", self.nms_threshold)
        if self.nms not in ("auto", "matrix", "per_group"):
            raise ValueError(f"nms: must be auto, matrix or per_group, got {self.nms!r}")
        if self.min_size < 0:
            raise ValueError(f"min_size: must be >= 0, got {self.min_size}")
        if self.stem_channels is not None:
            for c in self.stem_channels:
                _positive("stem_channels", c)
        _weights("box_weights", self.box_weights)
        if self.smooth_l1_beta < 0:
            raise ValueError(f"smooth_l1_beta: must be >= 0, got {self.smooth_l1_beta}")


@dataclass
class RoIConfig(_Section):
    """Second stage: RoI sampling, RoIAlign, two-FC box head, post-processing.

    ``pooler``: RoIAlign backend, ``rows`` (sync-free ``embedding_bag``, fast on CPU),
    ``torchvision`` (``roi_align`` per level) or ``auto`` (torchvision on CUDA, rows elsewhere).
    """

    iou_threshold: float = 0.5
    batch_size_per_image: int = 256
    positive_fraction: float = 0.25
    output_size: int = 7
    sampling_ratio: int = 2
    pooler: str = "auto"
    head_dim: int = 256
    box_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    smooth_l1_beta: float = 1.0
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100

    def __post_init__(self) -> None:
        _fraction("iou_threshold", self.iou_threshold)
        _fraction("positive_fraction", self.positive_fraction)
        _fraction("nms_threshold", self.nms_threshold)
        for name in ("batch_size_per_image", "output_size", "head_dim", "detections_per_image"):
            _positive(name, getattr(self, name))
        if self.sampling_ratio < 1:
            raise ValueError(
                f"sampling_ratio: must be >= 1 (adaptive sampling is not supported), got {self.sampling_ratio}"
            )
        if self.pooler not in ("auto", "rows", "torchvision"):
            raise ValueError(f"pooler: must be auto, rows or torchvision, got {self.pooler!r}")
        _weights("box_weights", self.box_weights)
        if self.smooth_l1_beta < 0:
            raise ValueError(f"smooth_l1_beta: must be >= 0, got {self.smooth_l1_beta}")
        if not 0 <= self.score_threshold < 1:
            raise ValueError(f"score_threshold: must be in [0, 1), got {self.score_threshold}")


@dataclass
class DetectorConfig(_Section):
    """Everything needed to build a :class:`~detector.model.FasterRCNN`.

    Attributes:
        num_classes: foreground classes ``C``; labels are ``1..C``, 0 is background.
        class_names: optional names of classes ``1..C`` (length ``C``).
        backbone: one of :data:`BACKBONES`.
        pretrained: ``None`` (train from scratch), a torchvision weights enum name
            (``"ResNet18_Weights.IMAGENET1K_V1"`` or ``"DEFAULT"``), or a path to a
            local ``.pth`` state dict of the torchvision classification model.
        trainable_backbone_layers: with pretrained weights, how many of the 5
            backbone stages (stem, stage1..4) are trained, counting from the top;
            the others are frozen. From scratch, every stage trains.
        fpn_levels: consecutive pyramid levels from 2..6 (stride ``2**level``);
            p6 is a max-pool of the coarsest FPN output (torchvision's ``LastLevelMaxPool``).
        fpn_channels: channels of every FPN output.
        image_mean, image_std: RGB normalisation applied inside the model to
            images in ``[0, 1]``.
    """

    num_classes: int
    class_names: list[str] | None = None
    backbone: str = "regnet_x_400mf"
    pretrained: str | None = None
    trainable_backbone_layers: int = 3
    fpn_levels: list[int] = field(default_factory=lambda: [3, 4, 5])
    fpn_channels: int = 128
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)

    def __post_init__(self) -> None:
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise ValueError(f"num_classes: must be an int >= 1, got {self.num_classes!r}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names: {len(self.class_names)} names for num_classes={self.num_classes}: {self.class_names}"
            )
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: unknown backbone {self.backbone!r} (known: {', '.join(BACKBONES)})")
        if not 0 <= self.trainable_backbone_layers <= 5:
            raise ValueError(
                f"trainable_backbone_layers: must be in 0..5, got {self.trainable_backbone_layers}"
            )
        levels = list(self.fpn_levels)
        if not levels:
            raise ValueError("fpn_levels: must not be empty")
        for level in levels:
            if level not in FPN_LEVELS:
                raise ValueError(f"fpn_levels: unknown fpn level {level} (allowed: {list(FPN_LEVELS)})")
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"fpn_levels: must be increasing and consecutive, got {levels}")
        if levels == [6]:
            raise ValueError("fpn_levels: p6 needs at least one of p2..p5 below it, got [6]")
        _positive("fpn_channels", self.fpn_channels)
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"{name}: expected 3 (RGB) values, got {value}")
        for s in self.image_std:
            _positive("image_std", s)
        if self.anchors.per_level and len(self.anchors.scales) != len(levels):
            raise ValueError(
                f"anchors.scales: {len(self.anchors.scales)} per-level lists for {len(levels)} fpn_levels {levels}"
            )

    @classmethod
    def from_dict(  # type: ignore[override]
        cls,
        d: dict[str, Any],
        num_classes: int,
        class_names: list[str] | None = None,
        prefix: str = "model",
    ) -> DetectorConfig:
        """Build from the ``model:`` section of the params (a plain dict).

        Unknown keys and badly typed or invalid values raise ``ValueError``
        naming the dotted key, e.g. ``model.rpn.iou_thresholds``.
        """
        d = dict(d)
        # a checkpoint's to_dict() output carries these two: accept them when consistent
        for key, given in (("num_classes", num_classes), ("class_names", class_names)):
            if key in d:
                stored = d.pop(key)
                if given is not None and stored is not None and stored != given:
                    raise ValueError(f"{typed.join_key(prefix, key)}: {stored!r} conflicts with the given {given!r}")
                if key == "class_names" and given is None:
                    class_names = stored
        return super().from_dict(d, prefix=prefix, num_classes=num_classes, class_names=class_names)

    @property
    def strides(self) -> list[int]:
        return [2**level for level in self.fpn_levels]

    @property
    def rpn_stem_channels(self) -> list[int]:
        return list(self.rpn.stem_channels) if self.rpn.stem_channels is not None else [self.fpn_channels]

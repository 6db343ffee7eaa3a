"""Typed view of ``params.yaml``: loading, ``--set`` overrides and validation.

This is the only place that reads the params file. Each stage receives the typed
:class:`Params` (or one section of it) and calls plain functions with explicit
arguments. An unknown key or a badly typed value is an error naming the dotted key
and the file, raised before any expensive work starts.

The ``model`` section is validated by :meth:`detector.DetectorConfig.from_dict`,
so the library and the pipeline share one definition of every model knob.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ParamsError(ValueError):
    """A params file or override that cannot be used; the message names the key."""


# --------------------------------------------------------------------------- sections
@dataclass
class SyntheticParams:
    num_train: int = 240
    num_val: int = 60
    image_size: int = 256
    min_objects: int = 2
    max_objects: int = 6
    min_object_size: int = 12
    max_object_size: int = 128
    max_aspect_ratio: float = 4.0
    tall_wide_only: bool = False

    def __post_init__(self) -> None:
        _positive(self, "data.synthetic", ["num_train", "num_val", "image_size", "min_object_size",
                                           "max_object_size", "max_objects"])
        if self.min_objects < 0 or self.min_objects > self.max_objects:
            raise ParamsError(f"data.synthetic.min_objects: {self.min_objects} must be in [0, max_objects={self.max_objects}]")
        if self.min_object_size > self.max_object_size:
            raise ParamsError(f"data.synthetic.min_object_size: {self.min_object_size} must be <= max_object_size ({self.max_object_size})")
        if self.max_object_size > self.image_size:
            raise ParamsError(f"data.synthetic.max_object_size: {self.max_object_size} must be <= image_size ({self.image_size})")
        if self.max_aspect_ratio < 1.0:
            raise ParamsError(f"data.synthetic.max_aspect_ratio: {self.max_aspect_ratio} must be >= 1")


@dataclass
class CocoParams:
    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    test_annotations: str | None = None      # a held-out test split (sweeps never see it)
    test_images: str | None = None


@dataclass
class VocParams:
    root: str | None = None


@dataclass
class ResizeParams:
    min_size: int = 256
    max_size: int = 256

    def __post_init__(self) -> None:
        _positive(self, "data.resize", ["min_size", "max_size"])
        if self.max_size < self.min_size:
            raise ParamsError(f"data.resize.max_size: {self.max_size} must be >= min_size ({self.min_size})")


@dataclass
class DataParams:
    source: Literal["synthetic", "coco", "voc"] = "synthetic"
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.0                # held out from train as data/prepared/test.json; 0: none
    on_invalid_box: Literal["error", "clip", "drop"] = "error"
    verify_images: Literal["header", "decode"] = "header"  # header: size, format, truncation; decode: every pixel
    exif_orientation: Literal["apply", "ignore"] = "apply"  # the frame of annotations of EXIF-rotated photos
    bad_images: Literal["skip", "fail"] = "skip"  # an image that cannot be decoded: skip and list it, or stop
    max_bad_fraction: float = 0.001          # skipped images of a split above this fraction stop the run
    classes: list[str] | None = None
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    coco: CocoParams = field(default_factory=CocoParams)
    voc: VocParams = field(default_factory=VocParams)
    resize: ResizeParams = field(default_factory=ResizeParams)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ParamsError(f"data.val_fraction: {self.val_fraction} must be in (0, 1)")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ParamsError(f"data.test_fraction: {self.test_fraction} must be in [0, 1) (0: no held-out test split)")
        if self.test_fraction > 0 and self.coco.test_annotations:
            raise ParamsError("data.test_fraction and data.coco.test_annotations both ask for a test split: set one")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ParamsError(f"data.max_bad_fraction: {self.max_bad_fraction} must be in [0, 1] (a fraction of a split)")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ParamsError(f"data.classes: {self.classes} must be null or a non-empty list of distinct names")
        if self.source == "coco" and not (self.coco.train_annotations and self.coco.train_images):
            raise ParamsError("data.coco.train_annotations and data.coco.train_images must be set when data.source is coco")
        if self.source == "voc" and not self.voc.root:
            raise ParamsError("data.voc.root must be set when data.source is voc")


@dataclass
class AugmentParams:
    """``train.augment``: the training recipe (:func:`pipeline.data.transforms.build_transforms`)."""

    scale_jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])  # resize limits x U(lo, hi)
    iou_crop_prob: float = 0.0       # SSD's random IoU crop
    zoom_out_prob: float = 0.0       # random zoom-out onto a black canvas up to zoom_out_max x the side
    zoom_out_max: float = 2.0
    photometric_prob: float = 0.0    # RandomPhotometricDistort, per colour operation
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0

    def __post_init__(self) -> None:
        if len(self.scale_jitter) != 2 or not 0 < self.scale_jitter[0] <= self.scale_jitter[1]:
            raise ParamsError(f"train.augment.scale_jitter: {self.scale_jitter} must be [lo, hi] with 0 < lo <= hi "
                              "(the resize limits are multiplied by a factor drawn from it; [1, 1]: off)")
        for name in ("iou_crop_prob", "zoom_out_prob", "photometric_prob", "hflip_prob", "vflip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ParamsError(f"train.augment.{name}: {getattr(self, name)} must be in [0, 1]")
        if self.zoom_out_max < 1.0:
            raise ParamsError(f"train.augment.zoom_out_max: {self.zoom_out_max} must be >= 1 (canvas side / image side)")

    def recipe(self) -> Any:
        """The :class:`pipeline.data.transforms.Augment` these keys describe."""
        from pipeline.data.transforms import Augment

        values = dataclasses.asdict(self)
        return Augment(**values | {"scale_jitter": tuple(self.scale_jitter)})


@dataclass
class TrainParams:
    epochs: int = 12
    batch_size: int = 4                      # images per worker per step
    lr: float = 0.02                         # at reference_batch_size images per step (see lr_scaling)
    seed: int = 0
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9                    # sgd only
    weight_decay: float = 1e-4
    lr_scaling: Literal["linear", "none"] = "linear"  # linear: lr x total_batch / reference_batch_size
    reference_batch_size: int = 16
    lr_schedule: Literal["multistep", "cosine"] = "multistep"
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])  # multistep: epochs where lr *= lr_gamma
    lr_gamma: float = 0.1
    warmup_iters: int = 50                   # linear warm-up from warmup_factor x lr over this many steps
    warmup_factor: float = 0.001
    grad_clip_norm: float | None = 10.0      # null: no clipping
    amp: Literal["bf16", "fp16", "off"] = "bf16"  # autocast dtype on GPU; CPU always trains in float32
    augment: AugmentParams = field(default_factory=AugmentParams)
    val_every: int = 1                       # epochs between validations; 0: never
    precise_bn_images: int = 0               # recompute batch-norm statistics over this many train images at the end; 0: off
    log_every: int = 10                      # steps between progress lines / step metrics
    loader_workers: int | Literal["auto"] = "auto"  # DataLoader processes per training worker; auto: 0 on CPU, a few on CUDA
    group_by_aspect_ratio: bool | Literal["auto"] = "auto"  # one aspect-ratio group per batch; auto: when images differ
    compile: bool = False                    # torch.compile the backbone (minutes of compiling per worker)

    def __post_init__(self) -> None:
        _positive(self, "train", ["epochs", "batch_size", "lr", "reference_batch_size", "lr_gamma",
                                  "warmup_factor", "log_every"])
        if self.loader_workers != "auto" and self.loader_workers < 0:
            raise ParamsError(f"train.loader_workers: {self.loader_workers} must be >= 0 or auto")
        for name in ("momentum", "weight_decay", "warmup_iters", "val_every", "precise_bn_images"):
            if getattr(self, name) < 0:
                raise ParamsError(f"train.{name}: {getattr(self, name)} must be >= 0")
        if self.warmup_factor > 1:
            raise ParamsError(f"train.warmup_factor: {self.warmup_factor} must be in (0, 1]")
        if any(s <= 0 for s in self.lr_steps) or self.lr_steps != sorted(set(self.lr_steps)):
            raise ParamsError(f"train.lr_steps: {self.lr_steps} must be increasing positive epochs")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ParamsError(f"train.grad_clip_norm: {self.grad_clip_norm} must be > 0 or null")


@dataclass
class RayParams:
    address: str | None = None
    num_workers: int | list[int] = 1         # or [min, max]: elastic (Ray Train resizes between them)
    use_gpu: bool = False
    cpus_per_worker: float = 1
    storage_path: str | None = None
    max_failures: int = 1
    resources_per_worker: dict[str, float] = field(default_factory=dict)  # extra custom resources
    checkpoints_to_keep: int = 2             # the latest checkpoint is always kept as well
    checkpoint_score_attribute: str | None = None  # null: keep the latest; e.g. AP50 (max) or loss (min)

    def __post_init__(self) -> None:
        if isinstance(self.num_workers, list):
            if len(self.num_workers) != 2 or not 0 < self.num_workers[0] <= self.num_workers[1]:
                raise ParamsError(f"ray.num_workers: {self.num_workers} must be a positive int or [min, max] "
                                  f"with 0 < min <= max")
        elif self.num_workers <= 0:
            raise ParamsError(f"ray.num_workers: {self.num_workers} must be > 0")
        _positive(self, "ray", ["cpus_per_worker", "checkpoints_to_keep"])
        if self.max_failures < -1:
            raise ParamsError(f"ray.max_failures: {self.max_failures} must be >= -1 (-1 retries forever)")

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def elastic(self) -> bool:
        """True when the worker count may change during the run (``num_workers: [min, max]``, min < max)."""
        return self.min_workers != self.max_workers

    def scaling_num_workers(self) -> int | tuple[int, int]:
        """``ScalingConfig(num_workers=...)``: an int, or ``(min, max)`` for elastic training."""
        return (self.min_workers, self.max_workers) if self.elastic else self.max_workers


@dataclass
class MlflowParams:
    tracking_uri: str | None = None
    experiment_name: str = "faster-rcnn"
    registered_model_name: str | None = "faster-rcnn-fpn"  # null: log the model without registering it
    registered_model_alias: str | None = "latest-train"  # moved to each new version; null: no alias
    log_model: bool = True                   # log the final model as a servable pyfunc model
    system_metrics: bool = True              # CPU/memory/disk/network/GPU of every node into each run
    system_metrics_interval_s: float = 10.0  # seconds between two system-metric samples of a node

    def __post_init__(self) -> None:
        if not self.system_metrics_interval_s > 0:
            raise ParamsError(f"mlflow.system_metrics_interval_s: {self.system_metrics_interval_s} must be > 0")
        alias = self.registered_model_alias
        if alias is not None and (not re.fullmatch(r"[\w-]{1,255}", alias) or alias.lower() == "latest"
                                  or re.fullmatch(r"[vV]\d+", alias)):
            raise ParamsError(f"mlflow.registered_model_alias: {alias!r} is not a usable MLflow alias (letters, "
                              "digits, '_' and '-'; not 'latest' nor a version like 'v3'), or null for no alias")


@dataclass
class EvaluateParams:
    """The ``evaluate`` section: the ``evaluate`` stage and the defaults of ``predict``."""

    batch_size: int = 8
    score_threshold: float = 0.05       # detections below this are not written (nor scored)
    draw_score_threshold: float = 0.3   # pictures draw only detections at least this confident
    num_pictures: int = 8
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # auto: cuda when available
    tracking_retries: int = 3           # logging into the training's MLflow run: retries before the stage fails
    tracking_backoff_s: float = 5.0     # ... the first wait; each next one doubles
    cluster: bool = True                # on the Ray cluster (Ray Data); false: in this process, on `device`
    replicas: list[int] = field(default_factory=lambda: [1, 2])  # detector actors [min, max] (autoscaled)
    cpus_per_replica: float = 1         # CPUs reserved per detector actor (its torch threads)
    gpus_per_replica: float = 0         # GPUs per actor; a fraction shares one GPU (0.5: two per GPU)
    decode_cpus: float = 0.5            # CPUs reserved per decoding task

    def __post_init__(self) -> None:
        _positive(self, "evaluate", ["batch_size", "cpus_per_replica", "decode_cpus"])
        if (not isinstance(self.replicas, list) or len(self.replicas) != 2
                or not 0 < self.replicas[0] <= self.replicas[1]):
            raise ParamsError(f"evaluate.replicas: {self.replicas} must be [min, max] with 0 < min <= max")
        if self.gpus_per_replica < 0 or (self.gpus_per_replica > 0 and self.device == "cpu"):
            raise ParamsError(f"evaluate.gpus_per_replica: {self.gpus_per_replica} must be >= 0, and > 0 needs "
                              f"evaluate.device cuda or auto (got {self.device})")
        if self.tracking_retries < 0 or self.tracking_backoff_s < 0:
            raise ParamsError(f"evaluate.tracking_retries ({self.tracking_retries}) and "
                              f"evaluate.tracking_backoff_s ({self.tracking_backoff_s}) must be >= 0")
        for name in ("score_threshold", "draw_score_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ParamsError(f"evaluate.{name}: {getattr(self, name)} must be in [0, 1)")
        if self.num_pictures < 0:
            raise ParamsError(f"evaluate.num_pictures: {self.num_pictures} must be >= 0")


@dataclass
class TuneParams:
    """The ``tune`` section: a Ray Tune sweep (``pipeline/tuning/``). ``space`` is checked there."""

    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = 1           # grid: repeats of the whole grid; random / optuna: number of trials
    max_concurrent_trials: int = 1
    seed: int = 0                  # random / optuna sampling seed
    space: dict[str, Any] = field(default_factory=dict)
    startup_trials: int | None = None      # optuna: random trials before TPE models; null: num_samples // 3 (2..10)
    fitted_anchors: str = "reports/anchors.yaml"  # what `fitted` means in a model.anchors entry of space
    epochs: int = 4                # per trial; overrides train.epochs
    metric: Literal["AP50", "AP"] = "AP50"
    mode: Literal["max", "min"] = "max"
    grace_period: int = 1          # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2      # ASHA: keep the top 1/reduction_factor at each rung
    workers_per_trial: int | None = None   # null: ray.num_workers
    cpus_per_worker: float | None = None   # null: ray.cpus_per_worker
    use_gpu: bool | None = None            # null: ray.use_gpu
    held_out: bool = False         # after the sweep: winner vs defaults retrained, scored on <data_dir>/test.json

    def __post_init__(self) -> None:
        _positive(self, "tune", ["num_samples", "max_concurrent_trials", "epochs", "grace_period"])
        if self.reduction_factor < 2:
            raise ParamsError(f"tune.reduction_factor: {self.reduction_factor} must be >= 2")
        if self.startup_trials is not None and self.startup_trials < 1:
            raise ParamsError(f"tune.startup_trials: {self.startup_trials} must be >= 1 (or null)")
        for name, fallback in (("workers_per_trial", "num_workers"), ("cpus_per_worker", "cpus_per_worker")):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ParamsError(f"tune.{name}: {value} must be > 0 (or null to reuse ray.{fallback})")


@dataclass
class AnchorsParams:
    """The ``anchors`` section: ``python -m pipeline anchors`` (``pipeline/anchor_search/``)."""

    budget: int | None = None      # anchors per location; null: len(scales) x len(aspect_ratios) of model.anchors
    per_level: bool = True         # one scale list per FPN level (sizes grow with the level); false: one shared list
    search_boxes: int = 10000      # boxes subsampled for the search; the result is scored on all boxes
    generations: int = 400         # evolution steps of each of the two best layouts (screening: a quarter)
    seed: int = 0
    fg_coverage: float = 0.95      # proposed RPN foreground IoU: the highest (0.4..0.7) this share of boxes' best anchors reach
    bg_margin: float = 0.1         # proposed RPN background IoU = foreground - bg_margin

    def __post_init__(self) -> None:
        _positive(self, "anchors", ["search_boxes", "generations"])
        if self.budget is not None and self.budget < 1:
            raise ParamsError(f"anchors.budget: {self.budget} must be >= 1 (or null: as many as model.anchors has)")
        if not 0.0 < self.fg_coverage <= 1.0:
            raise ParamsError(f"anchors.fg_coverage: {self.fg_coverage} must be in (0, 1]")
        if not 0.0 < self.bg_margin <= 0.6:
            raise ParamsError(f"anchors.bg_margin: {self.bg_margin} must be in (0, 0.6]")


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainParams = field(default_factory=TrainParams)
    ray: RayParams = field(default_factory=RayParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    tune: TuneParams = field(default_factory=TuneParams)
    anchors: AnchorsParams = field(default_factory=AnchorsParams)
    # Where the params came from (not a params key): used in messages and artifacts.
    source_path: str | None = field(default=None, metadata={"internal": True})

    def detector_config(self, num_classes: int, class_names: list[str] | None = None):
        """The validated :class:`detector.DetectorConfig` for the ``model`` section."""
        from detector import DetectorConfig

        try:
            return DetectorConfig.from_dict(self.model, num_classes=num_classes, class_names=class_names)
        except ValueError as err:
            raise ParamsError(f"{self.source_path or 'params'}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every params key (the inverse of :func:`params_from_dict`)."""
        out = dataclasses.asdict(self)
        out.pop("source_path")
        return out


# --------------------------------------------------------------------------- loading
def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None,
                validate_model: bool = True) -> Params:
    """Read ``path``, apply ``key.path=value`` overrides and return validated :class:`Params`.

    Raises:
        ParamsError: the file is missing or malformed, a key is unknown, or a value has
            the wrong type or range. The message names the file and the dotted key.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (pass --params PATH)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        params = params_from_dict(raw)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from err
    params.source_path = str(path)
    if validate_model:
        params.detector_config(num_classes=1)
    return params


# Keys that moved: a params.yaml or --set with the old name gets the new one in its error.
RENAMED_KEYS = {"train.hflip_prob": "train.augment.hflip_prob",
                "train.color_jitter": "train.augment.photometric_prob (RandomPhotometricDistort's probability)"}


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Build :class:`Params` from a nested dict, checking keys and types."""
    from detector import typed  # imported here: ``import detector`` loads torch

    for old, new in RENAMED_KEYS.items():
        section, _, name = old.partition(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            raise ParamsError(f"{old}: renamed to {new}; move the value there")
    return typed.from_dict(Params, raw, error=ParamsError, relative_errors=False)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied (value parsed as YAML).

    The key must already exist in the params schema; ``dvc exp run -S`` uses the same syntax.
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamsError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ParamsError(f"--set {key}: value {text!r} is not valid YAML: {err}") from err
        if key in RENAMED_KEYS:
            raise ParamsError(f"--set {key}: renamed to {RENAMED_KEYS[key]}")
        if not _schema_has_key(key):
            raise ParamsError(f"--set {key}: unknown params key")
        try:
            set_dotted(raw, key, value)
        except ParamsError as err:
            raise ParamsError(f"--set {err}") from None
    return raw


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key == "a.b.c"``, creating missing sections."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ParamsError(f"{key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _schema_has_key(key: str) -> bool:
    from detector import typed

    parts = key.split(".")
    cls: Any = Params
    for i, part in enumerate(parts):
        if part == "model" and i == 0:
            return True  # validated by DetectorConfig.from_dict, which names unknown keys
        if not dataclasses.is_dataclass(cls):
            return False
        fields = typed.field_types(cls)
        if part not in fields:
            return False
        cls = fields[part]
    return True


def _positive(obj: Any, section: str, names: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ParamsError(f"{section}.{name}: {value} must be > 0")

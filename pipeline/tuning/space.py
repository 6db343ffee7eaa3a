"""The sweep's search space: ``tune.space`` parsed, validated and turned into Ray Tune's.

``tune.space`` maps dotted params keys (the ``--set`` / ``dvc exp run -S`` keys) to one
sampling rule each::

    model.anchors.scales: {grid: [[4], [8], [4, 8]]}      # enumerated (search: grid)
    model.rpn.iou_thresholds: {choice: [[0.3, 0.7], [0.3, 0.6]]}
    model.roi.iou_threshold: {uniform: [0.4, 0.6]}
    train.lr: {loguniform: [0.005, 0.05]}
    model.rpn.batch_size_per_image: {randint: [64, 257]}  # high exclusive

With ``search: grid`` every ``grid`` entry is enumerated (the full factorial, repeated
``num_samples`` times) and the other entries are sampled per trial; with ``search: random``
``grid`` entries are sampled like ``choice`` and ``num_samples`` is the number of trials.

Every value a trial can get is checked before any trial starts: each listed value and
both bounds of each distribution are applied to the params and validated by the real
params schema and :class:`detector.DetectorConfig`; combinations of the listed values are
checked too when there are not too many. Errors name the ``tune.space`` entry.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

from pipeline.params import Params, ParamsError, params_from_dict, set_dotted

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
LISTED = ("grid", "choice")
# Keys that configure the sweep or the data rather than a trial.
_SWEEPABLE_SECTIONS = ("model.", "train.", "data.resize.")
_FIXED_KEYS = {"train.epochs": "use tune.epochs (ASHA needs one epoch budget for all trials)"}
_MAX_COMBINATIONS = 4096


@dataclass(frozen=True)
class Dimension:
    """One ``tune.space`` entry: ``key`` sampled by ``kind`` from ``values``.

    ``values`` is the list of candidates for ``grid``/``choice`` and ``[low, high]`` for
    the distributions.
    """

    key: str
    kind: str
    values: tuple[Any, ...]

    @property
    def where(self) -> str:
        return f"tune.space.{self.key}"

    def candidates(self) -> list[Any]:
        """Values to validate: every listed value, or both bounds (``randint``'s high is exclusive)."""
        if self.kind in LISTED:
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]


def parse_space(space: dict[str, Any]) -> list[Dimension]:
    """Check the shape of ``tune.space`` and return one :class:`Dimension` per entry.

    Raises:
        ParamsError: naming the entry, for a malformed rule, an empty list, bounds with
            ``low >= high``, a non-positive ``loguniform`` bound, or a key that cannot be swept.
    """
    if not isinstance(space, dict):
        raise ParamsError(f"tune.space: expected a mapping of dotted params keys, got {space!r}")
    dims = []
    for key, rule in space.items():
        where = f"tune.space.{key}"
        if not isinstance(key, str) or not key.startswith(_SWEEPABLE_SECTIONS):
            raise ParamsError(f"{where}: only keys under {', '.join(s.rstrip('.') for s in _SWEEPABLE_SECTIONS)} "
                              f"can be swept")
        if key in _FIXED_KEYS:
            raise ParamsError(f"{where}: cannot be swept, {_FIXED_KEYS[key]}")
        if not isinstance(rule, dict) or len(rule) != 1:
            raise ParamsError(f"{where}: expected one rule like {{grid: [...]}}, one of {', '.join(KINDS)}; got {rule!r}")
        ((kind, values),) = rule.items()
        if kind not in KINDS:
            raise ParamsError(f"{where}: unknown rule {kind!r} (known: {', '.join(KINDS)})")
        if not isinstance(values, list) or not values:
            raise ParamsError(f"{where}: {kind} needs a non-empty list, got {values!r}")
        if kind not in LISTED:
            _check_bounds(where, kind, values)
        dims.append(Dimension(key, kind, tuple(values)))
    return dims


def _check_bounds(where: str, kind: str, values: list[Any]) -> None:
    if len(values) != 2:
        raise ParamsError(f"{where}: {kind} needs [low, high], got {values!r}")
    number = int if kind == "randint" else (int, float)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, number) or not math.isfinite(v):
            raise ParamsError(f"{where}: {kind} bounds must be finite {'integers' if kind == 'randint' else 'numbers'}, "
                              f"got {values!r}")
    low, high = values
    if low >= high:
        raise ParamsError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ParamsError(f"{where}: loguniform needs low > 0, got {low}")


def trial_params(base: dict[str, Any], config: dict[str, Any], epochs: int | None = None) -> Params:
    """The :class:`Params` of one trial: ``base`` (a ``Params.to_dict()``) with ``config`` applied.

    ``config`` maps dotted keys to sampled values; ``epochs`` (``tune.epochs``) replaces
    ``train.epochs``. The params schema is checked (the model section is not: call
    ``detector_config`` for that).
    """
    raw = copy.deepcopy(base)
    for key, value in config.items():
        set_dotted(raw, key, value)
    if epochs is not None:
        set_dotted(raw, "train.epochs", epochs)
    return params_from_dict(raw)


def validate_space(params: Params, dims: list[Dimension] | None = None) -> list[Dimension]:
    """Validate every value the sweep can produce against the real params and model config.

    Each candidate (every listed value, both bounds of each distribution) is applied on its
    own to ``params``; then, if there are at most 4096 of them, every combination.

    Raises:
        ParamsError: naming the ``tune.space`` entry and the offending value.
    """
    dims = parse_space(params.tune.space) if dims is None else dims
    base = params.to_dict()
    for dim in dims:
        for i, value in enumerate(dim.candidates()):
            what = f"{dim.kind} value {i} ({value!r})" if dim.kind in LISTED else f"{dim.kind} bound {value!r}"
            _check_config(params, base, {dim.key: value}, f"{dim.where}: {what}")
    sizes = [len(dim.candidates()) for dim in dims]
    if 1 < len(dims) and math.prod(sizes) <= _MAX_COMBINATIONS:
        for combo in itertools.product(*(dim.candidates() for dim in dims)):
            config = {dim.key: value for dim, value in zip(dims, combo)}
            _check_config(params, base, config, f"tune.space: the combination {config}")
    return dims


def _check_config(params: Params, base: dict[str, Any], config: dict[str, Any], where: str) -> None:
    try:
        trial = trial_params(base, config, epochs=params.tune.epochs)
        trial.source_path = params.source_path
        trial.detector_config(num_classes=1)
    except ParamsError as err:
        raise ParamsError(f"{where}: {err}") from err


def num_trials(params: Params, dims: list[Dimension]) -> int:
    """How many trials the sweep runs."""
    if params.tune.search == "grid":
        grid = math.prod(len(dim.values) for dim in dims if dim.kind == "grid")
        return grid * params.tune.num_samples
    return params.tune.num_samples


def to_tune_space(dims: list[Dimension], search: str) -> dict[str, Any]:
    """Ray Tune's ``param_space`` (keys are the dotted params keys)."""
    from ray import tune

    space: dict[str, Any] = {}
    for dim in dims:
        values = list(dim.values)
        if dim.kind == "grid" and search == "grid":
            space[dim.key] = tune.grid_search(values)
        elif dim.kind in LISTED:
            space[dim.key] = tune.choice(values)
        elif dim.kind == "uniform":
            space[dim.key] = tune.uniform(*values)
        elif dim.kind == "loguniform":
            space[dim.key] = tune.loguniform(*values)
        else:
            space[dim.key] = tune.randint(*values)
    return space

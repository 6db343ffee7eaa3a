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
``grid`` entries are sampled like ``choice`` and ``num_samples`` is the number of trials; with
``search: optuna`` Optuna's TPE (through Ray Tune's ``OptunaSearch``) proposes ``num_samples``
trials from the results so far, ``grid`` entries being categorical like ``choice``.

Whole anchor sets are one key, ``model.anchors``, whose values are anchor sections or the
names ``default`` (the params' own ``model.anchors``) and ``fitted`` (the section of
``tune.fitted_anchors``, which ``python -m pipeline anchors`` writes)::

    model.anchors: {choice: [default, fitted, {scales: [4], aspect_ratios: [0.5, 1.0, 2.0]}]}
    model.rpn.iou_thresholds: {choice: [[0.3, 0.7], [0.3, 0.6], [0.4, 0.5]]}   # retuned with them

Trials, ``trials.csv`` and MLflow show the names; ``best_params.yaml`` and the ``dvc exp run``
line hold the anchor values they stand for.

Every value a trial can get is checked before any trial starts: each listed value and
both bounds of each distribution are applied to the params and validated by the real
params schema and :class:`detector.DetectorConfig`; combinations of the listed values are
checked too when there are not too many. Errors name the ``tune.space`` entry.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.params import Params, ParamsError, params_from_dict, set_dotted

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
LISTED = ("grid", "choice")
# Keys that configure the sweep or the data rather than a trial.
_SWEEPABLE_SECTIONS = ("model.", "train.", "data.resize.")
_FIXED_KEYS = {"train.epochs": "use tune.epochs (ASHA needs one epoch budget for all trials)"}
_MAX_COMBINATIONS = 4096
# Keys whose value is a whole params section; their values may be names (see the module docstring).
SECTION_KEYS = ("model.anchors",)
NAMED_ANCHORS = ("default", "fitted")


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

    def tokens(self, search: str) -> list[Any]:
        """What Ray Tune samples for a listed entry: the values, except that sections (dicts) are
        JSON text and, for Optuna (whose categories are scalars), so are lists."""
        return [json.dumps(v) if isinstance(v, dict) or (search == "optuna" and isinstance(v, list)) else v
                for v in self.values]

    def decode(self, token: Any, search: str) -> Any:
        """The value a sampled ``token`` stands for (names such as ``fitted`` stay names)."""
        if self.kind in LISTED:
            tokens = self.tokens(search)
            if token in tokens:
                return copy.deepcopy(self.values[tokens.index(token)])
        return token


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
        inside = [other for other in space if isinstance(other, str) and other.startswith(f"{key}.")]
        if inside:
            raise ParamsError(f"{where}: sweeps the whole section, so {inside[0]} cannot be swept too; "
                              f"list complete sections in {key} instead")
        if not isinstance(rule, dict) or len(rule) != 1:
            raise ParamsError(f"{where}: expected one rule like {{grid: [...]}}, one of {', '.join(KINDS)}; got {rule!r}")
        ((kind, values),) = rule.items()
        if kind not in KINDS:
            raise ParamsError(f"{where}: unknown rule {kind!r} (known: {', '.join(KINDS)})")
        if not isinstance(values, list) or not values:
            raise ParamsError(f"{where}: {kind} needs a non-empty list, got {values!r}")
        if kind not in LISTED:
            _check_bounds(where, kind, values)
        for i, value in enumerate(values):
            if key in SECTION_KEYS and kind in LISTED and not (isinstance(value, dict) or value in NAMED_ANCHORS):
                raise ParamsError(f"{where}: {kind} value {i} ({value!r}) must be an anchors section like "
                                  f"{{scales: [4], aspect_ratios: [0.5, 1.0, 2.0]}} or one of {', '.join(NAMED_ANCHORS)}")
            if key not in SECTION_KEYS and value in NAMED_ANCHORS and key.startswith("model.anchors."):
                raise ParamsError(f"{where}: {kind} value {i} ({value!r}) names a whole anchor set: "
                                  f"sweep model.anchors instead of {key}")
        if key in SECTION_KEYS and kind not in LISTED:
            raise ParamsError(f"{where}: a section is swept with grid or choice, not {kind}")
        dims.append(Dimension(key, kind, tuple(values)))
    return dims


def named_values(params: Params, dims: list[Dimension]) -> dict[str, dict[str, Any]]:
    """What the names in ``dims`` stand for: ``{"model.anchors": {"default": {...}, "fitted": {...}}}``.

    ``default`` is the params' own (validated) ``model.anchors``; ``fitted`` is read from
    ``tune.fitted_anchors`` and only when the space uses it.

    Raises:
        ParamsError: ``fitted`` is used but the file is missing or has no ``model.anchors``.
    """
    used = {value for dim in dims if dim.key in SECTION_KEYS for value in dim.values if isinstance(value, str)}
    if not used:
        return {}
    named: dict[str, Any] = {}
    if "default" in used:
        named["default"] = params.detector_config(num_classes=1).anchors.to_dict()
    if "fitted" in used:
        named["fitted"] = _fitted_anchors(Path(params.tune.fitted_anchors))
    return {"model.anchors": named}


def _fitted_anchors(path: Path) -> dict[str, Any]:
    where = "tune.space.model.anchors: 'fitted'"
    if not path.is_file():
        raise ParamsError(f"{where} reads {path} (tune.fitted_anchors), which does not exist: run "
                          f"`python -m pipeline anchors` (or `dvc repro sweeps/dvc.yaml:anchors`) first")
    import yaml

    try:
        section = (yaml.safe_load(path.read_text()) or {}).get("model", {}).get("anchors")
    except (yaml.YAMLError, AttributeError) as err:
        raise ParamsError(f"{where}: {path} is not a params-shaped YAML file ({err})") from err
    if not isinstance(section, dict):
        raise ParamsError(f"{where}: {path} has no model.anchors section; rerun `python -m pipeline anchors`")
    return section


def resolve_config(config: dict[str, Any], named: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """``config`` (dotted keys -> sampled values) with names replaced by the sections they stand for."""
    out = {}
    for key, value in config.items():
        if isinstance(value, str) and value in (named or {}).get(key, {}):
            value = named[key][value]  # type: ignore[index]
        out[key] = copy.deepcopy(value)
    return out


def decode_config(dims: list[Dimension], config: dict[str, Any], search: str) -> dict[str, Any]:
    """A Tune trial config (tokens, see :meth:`Dimension.tokens`) back as params values (names kept)."""
    by_key = {dim.key: dim for dim in dims}
    return {key: by_key[key].decode(value, search) if key in by_key else value for key, value in config.items()}


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
    named = named_values(params, dims)
    base = params.to_dict()
    for dim in dims:
        for i, value in enumerate(dim.candidates()):
            what = f"{dim.kind} value {i} ({value!r})" if dim.kind in LISTED else f"{dim.kind} bound {value!r}"
            _check_config(params, base, {dim.key: value}, f"{dim.where}: {what}", named)
    sizes = [len(dim.candidates()) for dim in dims]
    if 1 < len(dims) and math.prod(sizes) <= _MAX_COMBINATIONS:
        for combo in itertools.product(*(dim.candidates() for dim in dims)):
            config = {dim.key: value for dim, value in zip(dims, combo)}
            _check_config(params, base, config, f"tune.space: the combination {config}", named)
    if params.tune.search == "optuna":
        optuna_space(dims)
    return dims


def optuna_space(dims: list[Dimension]) -> dict[str, Any]:
    """The Optuna distributions Ray Tune's ``OptunaSearch`` will sample (``--check`` builds them).

    Raises:
        ParamsError: Optuna (``pip install optuna``) is missing or cannot take the space.
    """
    try:
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch.convert_search_space(to_tune_space(dims, "optuna"))
    except (ImportError, AssertionError) as err:
        raise ParamsError(f"tune.search: optuna needs the optuna package (`pip install optuna`): {err}") from err
    except ValueError as err:
        raise ParamsError(f"tune.space: Optuna cannot sample this space: {err}") from err


def _check_config(params: Params, base: dict[str, Any], config: dict[str, Any], where: str,
                  named: dict[str, dict[str, Any]] | None = None) -> None:
    try:
        trial = trial_params(base, resolve_config(config, named), epochs=params.tune.epochs)
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
    """Ray Tune's ``param_space`` (keys are the dotted params keys; listed values as :meth:`Dimension.tokens`)."""
    from ray import tune

    space: dict[str, Any] = {}
    for dim in dims:
        values = dim.tokens(search) if dim.kind in LISTED else list(dim.values)
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

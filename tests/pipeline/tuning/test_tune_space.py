"""tune.space parsing, validation and Ray Tune expansion (pipeline/tuning/space.py)."""

from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, load_params
from pipeline.tuning.space import (
    decode_config,
    num_trials,
    optuna_space,
    parse_space,
    resolve_config,
    to_tune_space,
    trial_params,
    validate_space,
)

REPO = Path(__file__).resolve().parents[3]


def _params(tmp_path, space, **tune):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tune": {"space": space, **tune}}))
    return load_params(path)


def test_repo_space_is_valid():
    params = load_params(REPO / "params.yaml")
    dims = validate_space(params)
    assert [d.key for d in dims][:2] == ["model.anchors.scales", "model.anchors.aspect_ratios"]
    assert num_trials(params, dims) == 3 * 2 * params.tune.num_samples


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.roi.iou_threshold": {"uniform": [0.6, 0.4]}}, r"tune.space.model.roi.iou_threshold: uniform needs low < high"),
        ({"train.lr": {"loguniform": [0.0, 0.1]}}, r"tune.space.train.lr: loguniform needs low > 0"),
        ({"train.lr": {"loguniform": [0.01]}}, r"tune.space.train.lr: loguniform needs \[low, high\]"),
        ({"model.anchors.aspect_ratios": {"grid": [[0.5, 1.0], []]}},
         r"tune.space.model.anchors.aspect_ratios: grid value 1 \(\[\]\): .*aspect_ratios: must not be empty"),
        ({"model.anchors.aspect_ratio": {"grid": [[1.0]]}},
         r"tune.space.model.anchors.aspect_ratio: .*model.anchors.aspect_ratio: unknown key"),
        ({"train.lrate": {"uniform": [0.01, 0.02]}}, r"tune.space.train.lrate: .*train.lrate: unknown key"),
        ({"model.rpn.iou_thresholds": {"choice": [[0.3, 0.7], "high"]}},
         r"tune.space.model.rpn.iou_thresholds: choice value 1 \('high'\): .*expected list of float"),
        ({"model.rpn.iou_thresholds": {"choice": [[0.7, 0.3]]}},
         r"tune.space.model.rpn.iou_thresholds: choice value 0 .*low \(0.7\) must be < high"),
        ({"model.roi.iou_threshold": {"uniform": [0.5, 1.5]}},
         r"tune.space.model.roi.iou_threshold: uniform bound 1.5: .*iou_threshold: must be in"),
        ({"train.batch_size": {"randint": [0, 4]}}, r"tune.space.train.batch_size: randint bound 0: .*must be > 0"),
        ({"model.anchors.scales": {"grid": []}}, r"tune.space.model.anchors.scales: grid needs a non-empty list"),
        ({"model.anchors.scales": {"sample": [[4]]}}, r"tune.space.model.anchors.scales: unknown rule 'sample'"),
        ({"model.anchors.scales": [[4]]}, r"tune.space.model.anchors.scales: expected one rule"),
        ({"train.epochs": {"grid": [1, 2]}}, r"tune.space.train.epochs: cannot be swept, use tune.epochs"),
        ({"ray.num_workers": {"grid": [1, 2]}}, r"tune.space.ray.num_workers: only keys under model, train"),
    ],
)
def test_bad_space_names_the_entry(tmp_path, space, message):
    params = _params(tmp_path, space)
    with pytest.raises(ParamsError, match=message):
        validate_space(params)


def test_combinations_are_checked(tmp_path):
    # each value is fine alone; per-level scales need as many lists as fpn_levels
    space = {"model.fpn_levels": {"grid": [[3, 4, 5], [4, 5]]},
             "model.anchors.scales": {"grid": [[8], [[4], [8], [16]]]}}
    with pytest.raises(ParamsError, match=r"tune.space: the combination .*'model.fpn_levels': \[4, 5\]"):
        validate_space(_params(tmp_path, space))


def test_trial_params_apply_dotted_keys_and_epochs(tmp_path):
    params = _params(tmp_path, {})
    trial = trial_params(params.to_dict(), {"model.anchors.scales": [4, 8], "train.lr": 0.01}, epochs=2)
    assert trial.model["anchors"]["scales"] == [4, 8]
    assert trial.train.lr == 0.01 and trial.train.epochs == 2
    assert params.train.epochs != 2  # the base is not modified
    assert trial.detector_config(num_classes=1).anchors.scales == [4.0, 8.0]


def test_grid_and_random_expansion(tmp_path):
    from ray.tune.search.sample import Categorical, Float

    space = {"model.anchors.scales": {"grid": [[4], [8]]},
             "model.rpn.iou_thresholds": {"choice": [[0.3, 0.7], [0.3, 0.6]]},
             "train.lr": {"loguniform": [0.005, 0.05]}}
    grid = _params(tmp_path, space, search="grid", num_samples=3)
    dims = validate_space(grid)
    assert num_trials(grid, dims) == 6
    tune_space = to_tune_space(dims, "grid")
    assert tune_space["model.anchors.scales"] == {"grid_search": [[4], [8]]}
    assert isinstance(tune_space["model.rpn.iou_thresholds"], Categorical)
    assert isinstance(tune_space["train.lr"], Float)

    random = _params(tmp_path, space, search="random", num_samples=5)
    assert num_trials(random, dims) == 5
    tune_space = to_tune_space(dims, "random")
    assert isinstance(tune_space["model.anchors.scales"], Categorical)
    assert tune_space["model.anchors.scales"].categories == [[4], [8]]


def test_bad_tune_section_names_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tune": {"search": "bayes"}}))
    with pytest.raises(ParamsError, match="tune.search: expected one of 'grid', 'random', 'optuna', got 'bayes'"):
        load_params(path)
    path.write_text(yaml.safe_dump({"tune": {"reduction_factor": 1}}))
    with pytest.raises(ParamsError, match="tune.reduction_factor: 1 must be >= 2"):
        load_params(path)
    assert parse_space({}) == []


def test_optuna_space_encodes_lists_and_decodes_them(tmp_path):
    import optuna.distributions as od
    from ray.tune.search.sample import Categorical

    space = {"model.anchors.scales": {"grid": [[4], [4, 8]]},
             "model.rpn.iou_thresholds": {"choice": [[0.3, 0.7], [0.3, 0.6]]},
             "model.roi.iou_threshold": {"uniform": [0.4, 0.6]}, "train.lr": {"loguniform": [0.005, 0.05]},
             "train.batch_size": {"choice": [2, 4]}}
    params = _params(tmp_path, space, search="optuna", num_samples=7)
    dims = validate_space(params)
    assert num_trials(params, dims) == 7
    tune_space = to_tune_space(dims, "optuna")
    assert isinstance(tune_space["model.anchors.scales"], Categorical)  # grid: categorical, not enumerated
    assert tune_space["model.anchors.scales"].categories == ["[4]", "[4, 8]"]
    assert tune_space["train.batch_size"].categories == [2, 4]  # scalars stay as they are
    dists = optuna_space(dims)
    assert dists["model.rpn.iou_thresholds"] == od.CategoricalDistribution(["[0.3, 0.7]", "[0.3, 0.6]"])
    assert dists["model.roi.iou_threshold"] == od.FloatDistribution(0.4, 0.6)
    assert dists["train.lr"] == od.FloatDistribution(0.005, 0.05, log=True)
    sampled = {"model.anchors.scales": "[4, 8]", "model.rpn.iou_thresholds": "[0.3, 0.6]",
               "model.roi.iou_threshold": 0.45, "train.lr": 0.01, "train.batch_size": 4}
    values = decode_config(dims, sampled, "optuna")
    assert values == {"model.anchors.scales": [4, 8], "model.rpn.iou_thresholds": [0.3, 0.6],
                      "model.roi.iou_threshold": 0.45, "train.lr": 0.01, "train.batch_size": 4}
    # grid/random sample the lists themselves; decoding is the identity there
    assert decode_config(dims, values, "random") == values
    assert to_tune_space(dims, "random")["model.rpn.iou_thresholds"].categories == [[0.3, 0.7], [0.3, 0.6]]


def test_named_anchor_sets_default_and_fitted(tmp_path):
    fitted = {"scales": [[3.0, 4.5], [3.5, 4.5], [2.5, 3.0]], "aspect_ratios": [0.3, 1.0, 3.0]}
    report = tmp_path / "anchors.yaml"
    report.write_text("# fitted\n" + yaml.safe_dump({"model": {"anchors": fitted}}))
    explicit = {"scales": [8], "aspect_ratios": [0.5, 1.0, 2.0]}
    space = {"model.anchors": {"choice": ["default", "fitted", explicit]},
             "model.rpn.iou_thresholds": {"choice": [[0.3, 0.7], [0.4, 0.5]]}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"model": {"anchors": {"scales": [2, 4], "aspect_ratios": [0.5, 2.0]}},
                                    "tune": {"space": space, "search": "optuna", "fitted_anchors": str(report)}}))
    params = load_params(path)
    dims = validate_space(params)
    from pipeline.tuning.space import named_values

    named = named_values(params, dims)
    assert named == {"model.anchors": {"default": {"scales": [2.0, 4.0], "aspect_ratios": [0.5, 2.0]},
                                       "fitted": fitted}}
    tokens = to_tune_space(dims, "optuna")["model.anchors"].categories
    assert tokens[:2] == ["default", "fitted"] and yaml.safe_load(tokens[2]) == explicit  # JSON text
    for token, section in zip(tokens, [named["model.anchors"]["default"], fitted, explicit]):
        values = decode_config(dims, {"model.anchors": token}, "optuna")
        assert values["model.anchors"] == (token if token in ("default", "fitted") else explicit)  # names stay
        trial = trial_params(params.to_dict(), resolve_config(values, named))
        assert trial.detector_config(num_classes=1).anchors.to_dict() == {
            "scales": section["scales"], "aspect_ratios": section["aspect_ratios"]}

    report.unlink()
    with pytest.raises(ParamsError, match="'fitted' reads .*anchors.yaml .*does not exist: run `python -m pipeline anchors`"):
        validate_space(params)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.anchors": {"choice": ["default"]}, "model.anchors.scales": {"grid": [[4]]}},
         r"tune.space.model.anchors: sweeps the whole section, so model.anchors.scales cannot be swept too"),
        ({"model.anchors": {"choice": ["best"]}},
         r"tune.space.model.anchors: choice value 0 \('best'\) must be an anchors section .* or one of default, fitted"),
        ({"model.anchors": {"choice": [{"scales": [4], "aspect_ratio": [1.0]}]}},
         r"tune.space.model.anchors: choice value 0 .*model.anchors.aspect_ratio: unknown key"),
        ({"model.anchors.scales": {"choice": ["fitted"]}},
         r"tune.space.model.anchors.scales: choice value 0 \('fitted'\) names a whole anchor set"),
    ],
)
def test_bad_anchor_sections_name_the_entry(tmp_path, space, message):
    with pytest.raises(ParamsError, match=message):
        validate_space(_params(tmp_path, space))

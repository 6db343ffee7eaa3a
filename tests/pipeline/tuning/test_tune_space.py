"""tune.space parsing, validation and Ray Tune expansion (pipeline/tuning/space.py)."""

from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, load_params
from pipeline.tuning.space import num_trials, parse_space, to_tune_space, trial_params, validate_space

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
    with pytest.raises(ParamsError, match="tune.search: expected one of 'grid', 'random', got 'bayes'"):
        load_params(path)
    path.write_text(yaml.safe_dump({"tune": {"reduction_factor": 1}}))
    with pytest.raises(ParamsError, match="tune.reduction_factor: 1 must be >= 2"):
        load_params(path)
    assert parse_space({}) == []

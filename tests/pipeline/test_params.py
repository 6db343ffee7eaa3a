"""params.yaml loading, --set overrides and validation (pipeline/params.py)."""

from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, apply_overrides, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_params_load():
    params = load_params(REPO / "params.yaml", validate_model=False)
    assert params.data.source == "synthetic"
    # every key written in the repo's params.yaml round-trips through the typed view
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    typed = params.to_dict()
    assert typed["model"] == raw["model"]  # passed through to DetectorConfig.from_dict untouched
    for section, values in raw.items():
        if section == "model":
            continue
        for key, value in values.items():
            if not isinstance(value, dict):
                assert typed[section][key] == value, f"{section}.{key}"


def test_set_overrides_are_yaml_typed(tmp_path):
    path = _write(tmp_path, {"train": {"epochs": 3}})
    params = load_params(path, ["train.epochs=5", "train.lr=0.5", "data.classes=[a, b]"], validate_model=False)
    assert params.train.epochs == 5 and params.train.lr == 0.5
    assert params.data.classes == ["a", "b"]
    raw = apply_overrides({}, ["model.anchors.aspect_ratios=[0.25,1,4]"])
    assert raw == {"model": {"anchors": {"aspect_ratios": [0.25, 1, 4]}}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "train.epoch: unknown params key"),
        ("train.hflip_prob=0.5", "train.hflip_prob: renamed to train.augment.hflip_prob"),
        ("train.epochs=abc", "train.epochs: expected int, got 'abc'"),
        ("train.epochs=true", "train.epochs: expected int, got True"),
        ("train.epochs=0", "train.epochs: 0 must be > 0"),
        ("data.source=kitti", "data.source: expected one of 'synthetic', 'coco', 'voc', got 'kitti'"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("ray.use_gpu=maybe", "ray.use_gpu: expected bool, got 'maybe'"),
        ("trainepochs", "expected key.path=value"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path, override, message):
    path = _write(tmp_path, {})
    with pytest.raises(ParamsError, match=message.replace("[", r"\[")):
        load_params(path, [override], validate_model=False)


def test_unknown_key_in_file_is_named(tmp_path):
    path = _write(tmp_path, {"data": {"synthetic": {"num_trian": 3}}})
    with pytest.raises(ParamsError) as err:
        load_params(path, validate_model=False)
    assert "data.synthetic.num_trian" in str(err.value) and str(path) in str(err.value)


def test_a_renamed_key_in_file_names_its_new_place(tmp_path):
    path = _write(tmp_path, {"train": {"color_jitter": 0.2}})
    with pytest.raises(ParamsError, match=r"train.color_jitter: renamed to train.augment.photometric_prob"):
        load_params(path, validate_model=False)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_cross_field_checks():
    with pytest.raises(ParamsError, match="data.coco.train_annotations"):
        params_from_dict({"data": {"source": "coco"}})
    with pytest.raises(ParamsError, match="data.synthetic.min_object_size"):
        params_from_dict({"data": {"synthetic": {"min_object_size": 50, "max_object_size": 20}}})


def test_num_workers_int_or_elastic_pair():
    fixed = params_from_dict({"ray": {"num_workers": 3}}).ray
    assert (fixed.min_workers, fixed.max_workers, fixed.elastic, fixed.scaling_num_workers()) == (3, 3, False, 3)
    elastic = params_from_dict({"ray": {"num_workers": [1, 4]}}).ray
    assert (elastic.min_workers, elastic.max_workers, elastic.elastic) == (1, 4, True)
    assert elastic.scaling_num_workers() == (1, 4)
    assert params_from_dict({"ray": {"num_workers": [2, 2]}}).ray.scaling_num_workers() == 2
    for bad in (0, [2, 1], [0, 2], [1, 2, 3], [1]):
        with pytest.raises(ParamsError, match="ray.num_workers"):
            params_from_dict({"ray": {"num_workers": bad}})

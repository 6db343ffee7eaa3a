"""The anchors stage (pipeline/anchors.py): reports, --apply round trip, input and params errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[2]
FAST = ["--set", "anchors.generations=40"]


@pytest.fixture
def repo_params(tmp_path):
    """A copy of the repo's params.yaml (comments and all) with the tiny data's 64 px resize."""
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    text = text.replace("    min_size: 256", "    min_size: 64").replace("    max_size: 256", "    max_size: 64")
    path.write_text(text)
    return path


def test_fit_writes_the_section_table_plot_and_applies(tmp_path, tiny_coco, repo_params, capsys, monkeypatch):
    out = tmp_path / "reports"
    before_text = repo_params.read_text()
    before = load_params(repo_params)
    args = ["anchors", "--params", str(repo_params), "--data-dir", str(tiny_coco), "--out-dir", str(out), *FAST]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "all boxes" in printed and "class red_box" in printed and "size small" in printed
    assert "dvc exp run -S 'model.anchors.scales=" in printed

    section = yaml.safe_load((out / "anchors.yaml").read_text())
    assert list(section) == ["model"] and set(section["model"]["anchors"]) == {"scales", "aspect_ratios"}
    report = json.loads((out / "anchors.json").read_text())
    assert report["fitted"] == section["model"]["anchors"]
    proposed = section["model"]["rpn"]["iou_thresholds"]  # fitted together with the anchors
    assert report["iou_thresholds"]["proposed"] == proposed and 0.1 <= proposed[0] < proposed[1] <= 0.7
    assert "model.rpn.iou_thresholds=" in printed and "proposed model.rpn.iou_thresholds" in printed
    assert report["budget"] == 2 * 5  # today's count: 2 scales x 5 ratios
    assert report["bpr_after"] >= report["bpr_before"]
    assert report["after"]["num_boxes"] == sum(  # every non-crowd training box
        1 for a in json.loads((tiny_coco / "train.json").read_text())["annotations"] if not a["iscrowd"])
    assert report["table"][0]["group"] == "all boxes" and report["table"][0]["bpr_after"] == report["bpr_after"]
    assert (out / "anchors.png").read_bytes()[:4] == b"\x89PNG"
    assert repo_params.read_text() == before_text  # no --apply: params untouched

    # --apply: the anchor keys and the RPN thresholds change, every other line (comments included) stays
    assert main([*args, "--apply"]) == 0
    assert "into " + str(repo_params) in capsys.readouterr().out
    after_text = repo_params.read_text()
    changed = [(a, b) for a, b in zip(before_text.splitlines(), after_text.splitlines()) if a != b]
    assert len(before_text.splitlines()) == len(after_text.splitlines())
    assert [b.split(":")[0].strip() for _, b in changed] == ["scales", "aspect_ratios", "iou_thresholds"]
    assert "# anchor side = FPN stride x scale" in after_text
    applied = load_params(repo_params)  # validated by DetectorConfig.from_dict
    assert applied.model["anchors"] == section["model"]["anchors"]
    assert applied.model["rpn"]["iou_thresholds"] == proposed
    config = applied.detector_config(num_classes=2)
    assert config.anchors.per_level and len(config.anchors.scales) == len(config.fpn_levels)
    assert list(config.rpn.iou_thresholds) == proposed
    assert {k: v for k, v in applied.model.items() if k != "anchors"} == \
        {k: v for k, v in before.model.items() if k != "anchors"} | {"rpn": before.model["rpn"] | {"iou_thresholds": proposed}}
    # train builds its model from them, and prepare's anchor-fit report uses them
    from detector import build_model

    assert build_model(config).rpn is not None
    work = tmp_path / "work"
    work.mkdir()
    tiny = ["data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
            "data.synthetic.min_object_size=8", "data.synthetic.max_object_size=32"]
    monkeypatch.chdir(work)
    assert main(["prepare", "--params", str(repo_params), *[a for t in tiny for a in ("--set", t)]]) == 0
    fit = json.loads((work / "reports/anchor_fit.json").read_text())
    assert fit["train"]["fg_iou"] == proposed[1] and fit["train"]["aspect_ratios"] == config.anchors.aspect_ratios


def test_shared_scales_and_budget(tmp_path, tiny_coco, repo_params):
    out = tmp_path / "reports"
    assert main(["anchors", "--params", str(repo_params), "--data-dir", str(tiny_coco), "--out-dir", str(out), *FAST,
                 "--set", "anchors.per_level=false", "--set", "anchors.budget=3"]) == 0
    fitted = yaml.safe_load((out / "anchors.yaml").read_text())["model"]["anchors"]
    assert all(isinstance(s, float) for s in fitted["scales"])
    assert len(fitted["scales"]) * len(fitted["aspect_ratios"]) <= 3


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("missing", [], "train.json not found: run `python -m pipeline prepare` first"),
        ("bad_json", [], "train.json: not valid JSON"),
        ("not_coco", [], "train.json: not a COCO file (missing annotations, categories)"),
        ("ok", ["--set", "anchors.budget=0"], "anchors.budget: 0 must be >= 1"),
        ("ok", ["--set", "anchors.budgets=4"], "anchors.budgets: unknown params key"),
        ("ok", ["--set", "anchors.per_level=maybe"], "anchors.per_level: expected bool"),
        ("ok", ["--set", "model.anchors.scales=[[2],[4]]"], "anchors.scales: 2 per-level lists for 3 fpn_levels"),
    ],
)
def test_errors_name_the_problem(tmp_path, tiny_coco, repo_params, capsys, setup, extra, message):
    data_dir = tiny_coco
    if setup != "ok":
        data_dir = tmp_path / "broken"
        data_dir.mkdir()
        if setup == "bad_json":
            (data_dir / "train.json").write_text("{ nope")
        elif setup == "not_coco":
            (data_dir / "train.json").write_text(json.dumps({"images": []}))
    out = tmp_path / "reports"
    assert main(["anchors", "--params", str(repo_params), "--data-dir", str(data_dir), "--out-dir", str(out),
                 *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "anchors.yaml").exists()

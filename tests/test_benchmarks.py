"""The benchmark scripts still run against the current code (tiny sizes; their figures are not checked here).

Benchmarks are run by hand, so an API change they do not follow goes unnoticed until somebody needs
the figure; these runs catch that. The Ray-based ones are marked ``bench`` (not in ``make test``,
which must stay under 10 minutes): run them with ``pytest -m bench`` after changing the training code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, timeout: float) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bench_grouping_pads_less_when_grouped(tmp_path):
    out = _run([str(REPO / "benchmarks/bench_grouping.py"), "--images", "12", "--batch", "4",
                "--min-size", "64", "--max-size", "107", "--threads", "1"], cwd=tmp_path, timeout=300)
    shares = {kind: float(share) for kind, share in re.findall(r"^(grouped|ungrouped)\s*: \d+ batches, padded pixels "
                                                              r"([\d.]+)%", out, flags=re.M)}
    assert set(shares) == {"grouped", "ungrouped"}, out
    assert shares["grouped"] < shares["ungrouped"], out  # portrait and landscape never share a batch
    assert re.search(r"grouped / ungrouped: [\d.]+x images/s", out), out


def test_bench_dataset_memory_measures_the_loader_tree_of_both_implementations(tmp_path):
    out = _run([str(REPO / "benchmarks/bench_dataset_memory.py"), "--images", "1000", "--workers", "2",
                "--batch", "32", "--rounds", "1"], cwd=tmp_path, timeout=600)
    assert "targets identical: yes" in out, out
    for impl in ("old", "new"):
        block = out.split(f" {impl}: load ", 1)[1]
        assert re.search(r"tree of 3 processes: USS \d+ -> \d+ MB, PSS \d+ -> \d+ MB; dataset state per process "
                         r"\(max\) \d+ MB", block), out  # the training process and its 2 loader workers
        assert re.search(r"loader worker 2: USS +[\d.]+ -> +[\d.]+ MB", block), out
        assert re.search(r"epoch through the loader \d+ images/s", block), out
    assert re.search(r"same process: load old [\d.]+ s, new [\d.]+ s .* ijson C backend [\d.]+ s", out), out
    assert re.search(r"new / old: dataset state per process \d+ / \d+ MB", out), out


@pytest.mark.slow
@pytest.mark.bench
def test_bench_quality_both_models_both_modes(tmp_path, tiny_coco, tiny_params_yaml):
    """One epoch each on the tiny set, from a relative DATA_DIR (the workers run in the shipped code's folder)."""
    params = tiny_params_yaml(["ray.num_workers=1", "train.precise_bn_images=4"])
    (tmp_path / "data").symlink_to(tiny_coco)
    _run([str(REPO / "benchmarks/bench_quality.py"), "data", "--params", str(params), "--epochs", "1",
          "--out", "result.json"], cwd=tmp_path, timeout=600)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["train_images"] == 8
    for mode in ("equal_epochs", "equal_wall_clock"):
        for model in ("ours", "torchvision"):
            row = result[mode][model]
            assert row["epochs"] == 1 and row["images_per_s"] > 0, (mode, model, row)
            assert all(0.0 <= row[k] <= 1.0 for k in ("AP", "AP50", "AP75")), (mode, model, row)
    assert result["equal_epochs"]["torchvision"]["parameters_M"] > result["equal_epochs"]["ours"]["parameters_M"]


@pytest.mark.slow
@pytest.mark.bench
def test_bench_live_steps_measures_the_put_and_delivers_every_row(tmp_path, tiny_params_yaml):
    params = tiny_params_yaml(["train.batch_size=2"])
    out = _run([str(REPO / "benchmarks/bench_live_steps.py"), "--steps", "6", "--threads", "1", "--params", str(params)],
               cwd=tmp_path, timeout=600)
    assert re.search(r"training step .*: median \d+ ms", out), out
    assert re.search(r"LiveSteps on the training thread: mean [\d.]+ us per step = [\d.]+% of a step", out), out
    assert re.search(r"the actor call \(on the sender thread\): median \d+ us, p95 \d+ us = [\d.]+% of a step", out), out
    assert "rows delivered live to the driver's side: 12 of 12" in out, out


def test_photo_set_is_exact_deterministic_and_prepares(tmp_path, monkeypatch):
    """benchmarks/photo_set.py: a tiny set twice (same bytes), every box on its pasted pixels, then `prepare`."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import numpy as np
    from photo_set import SetSpec, build
    from PIL import Image

    from pipeline.cli import main

    spec = SetSpec(train=6, val=3, test=3, seed=5)
    first, second = build(tmp_path / "a", spec), build(tmp_path / "b", spec)
    for split in ("train", "val", "test"):
        assert first[split].read_bytes() == second[split].read_bytes()
    coco = json.loads(first["train"].read_text())
    sizes = {(img["width"], img["height"]) for img in coco["images"]}
    assert any(w > h for w, h in sizes) or any(w < h for w, h in sizes)
    ratios = []
    for image in coco["images"]:
        pixels = np.asarray(Image.open(tmp_path / "a" / image["file_name"]).convert("RGB"), np.float32)
        background = pixels.mean()  # dimmed, blurred: objects are brighter and sharper on average
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
            ratios.append(w / h)
            inside = pixels[y:y + h, x:x + w]
            assert inside.size and np.abs(np.diff(inside, axis=1)).mean() > 0  # pasted photo texture, not flat
        assert background > 0
    assert min(ratios) < 0.4 and max(ratios) > 2.5  # tall and wide objects
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    root = tmp_path / "a"
    sets = ["data.source=coco", f"data.coco.train_annotations={first['train']}", f"data.coco.train_images={root}",
            f"data.coco.val_annotations={first['val']}", f"data.coco.val_images={root}",
            f"data.coco.test_annotations={first['test']}", f"data.coco.test_images={root}"]
    assert main(["prepare", *[arg for s in sets for arg in ("--set", s)]]) == 0
    report = json.loads((tmp_path / "reports/data.json").read_text())
    assert (report["train"]["images"], report["val"]["images"], report["test"]["images"]) == (6, 3, 3)
    assert report["class_names"] == ["temple", "flower", "portrait"]


def test_photo_set_sweep_preset_validates(tmp_path, tiny_coco):
    """sweeps/presets/photo_set.yaml over params.yaml: a valid 16-trial Optuna space whose `fitted` anchors are
    the anchors stage's output, and the anchor stage's proposed RPN thresholds among its choices."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_sweep import load_with_preset

    from pipeline.cli import main
    from pipeline.tuning.space import num_trials, validate_space

    out = tmp_path / "reports"
    assert main(["anchors", "--data-dir", str(tiny_coco), "--out-dir", str(out), "--set", "anchors.generations=20",
                 "--set", "data.resize.min_size=64", "--set", "data.resize.max_size=64"]) == 0
    preset = REPO / "sweeps/presets/photo_set.yaml"
    params = load_with_preset(REPO / "params.yaml", preset, [f"tune.fitted_anchors={out / 'anchors.yaml'}"])
    dims = validate_space(params)
    assert params.tune.search == "optuna" and num_trials(params, dims) == 16
    keys = {d.key for d in dims}
    assert {"model.anchors", "model.rpn.iou_thresholds", "train.augment.scale_jitter"} <= keys
    assert params.data.coco.test_annotations  # the winner and the defaults are scored on a held-out split


@pytest.mark.slow
@pytest.mark.bench
def test_bench_recipe_two_recipes_on_val_and_test(tmp_path, tiny_coco, tiny_params_yaml):
    params = tiny_params_yaml(["ray.num_workers=1"])
    data = tmp_path / "data"
    data.mkdir()
    for entry in tiny_coco.iterdir():
        (data / entry.name).symlink_to(entry)
    (data / "test.json").symlink_to(tiny_coco / "val.json")  # a third split for the test column
    out = _run([str(REPO / "benchmarks/bench_recipe.py"), str(data), "--params", str(params), "--epochs", "1",
                "--recipe", "old:", "--recipe", "crop:iou_crop_prob=1.0,scale_jitter=[0.8;1.2]", "--out", "r.json"],
               cwd=tmp_path, timeout=900)
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["recipe"] for r in rows] == ["old", "crop"] and "crop/old" in out
    assert rows[1]["augment"]["iou_crop_prob"] == 1.0 and rows[1]["augment"]["scale_jitter"] == [0.8, 1.2]
    for row in rows:
        assert all(0.0 <= row[split][k] <= 1.0 for split in ("val", "test") for k in ("AP", "AP50"))


@pytest.mark.slow
@pytest.mark.bench
def test_bench_sweep_scores_winner_and_defaults_on_test(tmp_path, tiny_coco, tiny_params_yaml):
    params = tiny_params_yaml(["ray.num_workers=1"])
    data = tmp_path / "data"
    data.mkdir()
    for entry in tiny_coco.iterdir():
        (data / entry.name).symlink_to(entry)
    (data / "test.json").symlink_to(tiny_coco / "val.json")
    preset = tmp_path / "preset.yaml"
    preset.write_text("tune:\n  search: optuna\n  num_samples: 2\n  startup_trials: 1\n  epochs: 1\n"
                      "  space:\n    model.rpn.iou_thresholds: {choice: [[0.3, 0.6], [0.4, 0.5]]}\n")
    out = _run([str(REPO / "benchmarks/bench_sweep.py"), str(data), "--preset", str(preset), "--params", str(params),
                "--out", "s.json"], cwd=tmp_path, timeout=1200)
    result = json.loads((tmp_path / "s.json").read_text())
    assert set(result["rows"]) == {"defaults", "winner"} and "winner - defaults on test" in out
    assert result["winner_params"]["model.rpn.iou_thresholds"] in ([0.3, 0.6], [0.4, 0.5])

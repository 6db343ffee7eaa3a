"""The benchmark scripts still run against the current code (tiny sizes; their figures are not checked here).

Benchmarks are run by hand, so an API change they do not follow goes unnoticed until somebody needs
the figure; these runs catch that. The Ray-based ones are marked ``bench`` (not in ``make test``,
which must stay under 10 minutes): run them with ``pytest -m bench`` after changing the training code.
"""

from __future__ import annotations

import json
import re
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

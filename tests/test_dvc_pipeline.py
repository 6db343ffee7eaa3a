"""End to end: `dvc repro` of prepare -> train -> evaluate in a temporary copy of the repo.

The data is what users bring: a test-made COCO source of mixed-size portrait and landscape JPEGs
with many, partly elongated boxes, inside the repository (``data/raw/coco``, as after
``dvc add``). Checks every declared output is produced, that ``prepare`` copied no image and its
JSON resolves to the source files, that training batched by aspect ratio, that a second
`dvc repro` reruns nothing (only the ``sources`` fingerprint check, which always runs), that a
rewritten source annotation file reruns ``prepare`` only (its output is unchanged, so training
is not redone), that changing an evaluation-only param reruns only `evaluate`, that the console has
no warning or error lines that are not about the run, that the live DVC metrics (DVCLive's files)
end at the last epoch, and that `dvc metrics show/diff` and `dvc plots show/diff` work and read well.
Last, ``dvc exp run --temp train`` after a change to the training code: DVC runs the stage in a copy
under ``.dvc/tmp/exps/`` that it deletes afterwards, so the default MLflow store (``mlflow.db``,
``mlruns/``) and ``ray_results/`` must land in the repository itself (``DVC_ROOT``), and the
finished run with the same params must not be reused or resumed (its code differs): a new run trains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "data": {"source": "coco", "val_fraction": 0.25,
             "coco": {"train_annotations": "data/raw/coco/annotations.json", "train_images": "data/raw/coco/images",
                      "val_annotations": None, "val_images": None},
             "resize": {"min_size": 64, "max_size": 96}},
    "model": {"backbone": "resnet18", "fpn_channels": 32,
              "rpn": {"batch_size_per_image": 64}, "roi": {"batch_size_per_image": 32}},
    "train": {"epochs": 1, "batch_size": 4, "warmup_iters": 1, "lr_steps": [100], "log_every": 1},
    "ray": {"num_workers": 1},
    "mlflow": {"registered_model_name": None},
    # in process: this test is about the DVC wiring; the stage's Ray path (2.8x the time at this size, BENCHMARKS.md)
    # runs as a stage in tests/pipeline/test_console.py and on a two-node cluster in test_batch_inference.py
    "evaluate": {"num_pictures": 2, "cluster": False},
}


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture
def repo_copy(repo_clone, mixed_coco) -> Path:
    return repo_clone(TINY, before_commit=lambda dest: mixed_coco(root=dest / "data" / "raw" / "coco", num_images=16))


def _env(cwd: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", RAY_TRAIN_ENABLE_PRINT_PATCH="0")
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DVC_ROOT"):
        env.pop(name, None)
    return env


def _runs(repo: Path) -> list:
    """The MLflow runs of the default store in ``repo``, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["experiment_name"])
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dvc_repro_end_to_end(repo_copy: Path, console_noise):
    env = _env(repo_copy)
    dvc = str(BIN / "dvc")
    out = _run([dvc, "repro"], repo_copy, env)
    assert console_noise(out) == [], out
    assert "batches grouped by aspect ratio" in out and "portrait" in out and "landscape" in out

    prepared = repo_copy / "data/prepared"
    assert sorted(p.name for p in prepared.rglob("*")) == ["train.json", "val.json"]  # no image copies
    for split in ("train", "val"):
        for image in json.loads((prepared / f"{split}.json").read_text())["images"]:
            assert (prepared / image["file_name"]).resolve().parent == repo_copy / "data/raw/coco/images"

    stages = yaml.safe_load((repo_copy / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for group in ("outs", "metrics", "plots"):
            for entry in stage.get(group, []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                assert (repo_copy / path).exists(), f"declared output {path} missing"
    metrics = yaml.safe_load((repo_copy / "reports/metrics.json").read_text())
    assert {"AP", "AP50", "AP75"} <= set(metrics)
    # the live DVC metrics (DVCLive's layout, written by the driver after each epoch) end at the last epoch
    live = json.loads((repo_copy / "dvclive/metrics.json").read_text())
    summary = json.loads((repo_copy / "reports/train.json").read_text())
    assert live["step"] == summary["epochs"] == 1 and live["loss"] == pytest.approx(summary["loss"])
    assert live["AP50"] == pytest.approx(summary["AP50"])

    out = _run([dvc, "repro"], repo_copy, env)
    assert [line for line in out.splitlines() if "Running stage" in line] == ["Running stage 'sources':"], out
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"]):
        _run(cmd, repo_copy, env)  # HEAD holds the results: `dvc metrics/plots diff` compare with it

    # the same annotations written differently: prepare reruns, writes the same data, training is not redone
    source = repo_copy / "data/raw/coco/annotations.json"
    source.write_text(json.dumps(json.loads(source.read_text()), indent=2))
    out = _run([dvc, "repro"], repo_copy, env)
    assert "Running stage 'prepare'" in out and "Running stage 'train'" not in out, out

    out = _run([dvc, "metrics", "show", "--json"], repo_copy, env)
    assert "AP50" in out

    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["evaluate"]["score_threshold"] = 0.1
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([dvc, "repro"], repo_copy, env)
    assert "Running stage 'evaluate'" in out
    assert "Running stage 'train'" not in out and "Running stage 'prepare'" not in out

    # --- DVC's own commands, as the README tells a user to run them
    out = _run([dvc, "metrics", "show", "--md"], repo_copy, env)
    classes = json.loads((repo_copy / "reports/data.json").read_text())["class_names"]
    # headline numbers only: a fixed part (with the live row's `step` and `loss`; its AP columns are shared,
    # and evaluate's `excluded_images`, the unreadable images left out of the metrics) plus one AP_<class>
    # column per class (the old table was ~3700 wide)
    limit = 200 + sum(len(f"AP_{name}") + 3 for name in classes)
    assert max(map(len, out.splitlines())) <= limit, out
    assert {"reports/data_metrics.json", "reports/train_metrics.json", "reports/metrics.json",
            "dvclive/metrics.json"} <= set(out.split())
    out = _run([dvc, "metrics", "diff", "--all", "--md"], repo_copy, env)
    assert "AP50" in out and "images_per_s" in out, out
    for cmd in (["plots", "show"], ["plots", "diff"]):
        out = _run([dvc, *cmd], repo_copy, env)
        assert "failed to load" not in out and "ERROR" not in out, out
        assert (repo_copy / "dvc_plots" / "index.html").is_file()
    # per-class PR curves: one colour per class, one line style per revision; the live loss curves: one
    # colour per revision (and one line style per loss term)
    proc = subprocess.run([dvc, "plots", "diff", "--json"], cwd=repo_copy, env=env, capture_output=True, text=True,
                          timeout=600, check=True)
    plots = {path: specs[0]["content"] for path, specs in json.loads(proc.stdout)["data"].items()
             if specs[0]["type"] == "vega"}
    spec = plots["reports/pr_curve.csv"]
    assert spec["encoding"]["color"]["field"] == "class" and spec["encoding"]["strokeDash"]["field"] == "rev"
    assert {row["rev"] for row in spec["data"]["values"]} == {"HEAD", "workspace"}
    spec = plots["dvclive/plots/metrics/loss.tsv"]
    assert spec["encoding"]["color"]["field"] == "rev" and spec["data"]["values"]
    spec = plots["dvclive/plots/custom/loss_terms.json"]
    assert spec["encoding"]["strokeDash"]["field"] == "field"
    assert {row["field"] for row in spec["data"]["values"]} == {"loss", "loss_box", "loss_cls", "loss_rpn_box",
                                                                "loss_rpn_obj"}

    # --- a code change (a comment in the training loop), run as a temporary DVC experiment
    (run,) = _runs(repo_copy)
    loop = repo_copy / "pipeline" / "training" / "worker.py"
    loop.write_text(loop.read_text() + "\n# a change to the training code\n")
    out = _run([dvc, "exp", "run", "--temp", "train"], repo_copy, env)
    assert "Running stage 'train'" in out, out
    assert "reusing finished run" not in out and "resuming from the checkpoint" not in out, out
    assert not list((repo_copy / ".dvc" / "tmp" / "exps").glob("tmp*"))  # the temporary copy is gone
    old, new = _runs(repo_copy)  # ... and its tracking and Ray run are in the repository
    assert old.info.run_id == run.info.run_id and new.info.status == "FINISHED" and new.data.tags.get("dvc_exp_name")
    assert Path(new.data.tags["detpipe.ray_run"]).parent == repo_copy / "ray_results"
    assert (repo_copy / "ray_results" / new.data.tags["ray_run_name"] / "detpipe_run.json").is_file()
    assert new.info.artifact_uri.startswith((repo_copy / "mlruns").as_uri())
    assert new.data.tags["code_fingerprint"] != old.data.tags["code_fingerprint"]
    assert new.data.tags["ray_run_name"] != old.data.tags["ray_run_name"]
    assert new.data.tags["params_hash"] == old.data.tags["params_hash"]
    assert new.data.metrics["epoch/loss"] > 0  # epoch 1 trained and tracked from the driver

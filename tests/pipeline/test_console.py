"""A quiet console: the cheap stages, run as a user runs them, print no warning or error lines
that are not about the user's run (the train stage is checked in tests/test_dvc_pipeline.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.synthetic.num_train=6", "data.synthetic.num_val=3", "data.synthetic.image_size=96",
        "data.synthetic.min_object_size=8", "data.synthetic.max_object_size=48",
        "data.resize.min_size=96", "data.resize.max_size=96", "evaluate.num_pictures=2"]


def _stage(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args, *(a for s in TINY for a in ("--set", s))],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_prepare_and_evaluate_print_no_warnings(tmp_path, console_noise):
    import torch

    from detector import DetectorConfig, build_model, save_checkpoint

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    out = _stage(["prepare"], tmp_path)
    assert "best possible recall" in out and console_noise(out) == [], out
    config = DetectorConfig.from_dict({"backbone": "resnet18", "fpn_channels": 16}, num_classes=5)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "models" / "model.pt", build_model(config))
    out = _stage(["evaluate"], tmp_path)
    assert "Average Precision" in out and console_noise(out) == [], out


def test_console_noise_keeps_ray_errors_and_leaves_out_the_machines_disk_warning(console_noise):
    disk = ("[2026-12-02 08:38:40,369 E 16872 16883] (raylet) file_system_monitor.cc:116: /tmp/ray/session_x "
            "is over 95% full, available space: 11.9 GB; capacity: 252.0 GB. Object creation will fail if spilling is required.")
    ray_error = "[2026-12-02 08:38:40,369 E 16872 16883] core_worker.cc:912: Failed to connect"
    console = "\n".join([disk, ray_error, "[train] epoch 1/1 done", "UserWarning: x", "warning: data/raw: 2 images skipped"])
    assert console_noise(console) == [ray_error, "UserWarning: x"]

"""The `python -m pipeline` entry point."""

import subprocess
import sys
from pathlib import Path

from pipeline.cli import STAGES, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert stage in out


def test_bad_override_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert main(["prepare", "--set", "data.synthetic.num_train=-1"]) == 2
    assert "data.synthetic.num_train: -1 must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()

"""The served model installs: a fresh virtual environment with the model's logged requirements alone
(``pip install -r requirements.txt``, nothing of this project installed) loads it from the registry and
predicts what it predicts here.

Marked ``install`` (not in the default run, like ``bench``): pip installs torch with its CUDA
libraries (~6 GB), MLflow and the rest, which takes about two minutes (see README, "Serving"). Run it
with ``pytest -m install tests/pipeline/serving``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import pytest

pytestmark = [pytest.mark.install, pytest.mark.slow]  # slow too: `pytest -m "not slow"` leaves it out as well

# Run by the fresh environment's python: nothing of the project is importable before the model is
# loaded (its code comes with the model), then load from the registry and predict one image.
_LOAD_AND_PREDICT = """
import importlib.util, json, sys, time
before = {name: importlib.util.find_spec(name) is not None for name in ("pipeline", "detector", "faster_coco_eval")}
start = time.monotonic()
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
rows = model.predict(pd.DataFrame({"image": [open(sys.argv[2], "rb").read()]}))
print(json.dumps({"importable_before": before, "pipeline": sys.modules["pipeline"].__file__,
                  "seconds": time.monotonic() - start, "rows": json.loads(rows.to_json(orient="records"))}))
"""


def _run(args: list[str], *, env: dict[str, str], cwd: Path, log: TextIO, timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    log.write(f"$ {' '.join(args[:4])} ...\n{out.stdout}\n{out.stderr}\n")
    assert out.returncode == 0, f"{args[:4]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def test_a_fresh_environment_with_the_logged_requirements_serves_the_model(registered_model, tmp_path, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_model.tracking_uri)
    requirements = mlflow.pyfunc.get_model_dependencies(registered_model.model_uri)  # the logged requirements.txt
    expected = json.loads(mlflow.pyfunc.load_model(registered_model.model_uri).predict(
        pd.DataFrame({"image": [registered_model.image]})).to_json(orient="records"))
    assert expected[0]["boxes"], "the model must detect something for the comparison to mean anything"
    (tmp_path / "image.png").write_bytes(registered_model.image)

    # a clean process environment: no PYTHONPATH and not the repository as the working directory (the
    # project's code must come from the model), no venv of ours
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    venv, python = tmp_path / "venv", tmp_path / "venv" / "bin" / "python"
    with (tmp_path / "install.log").open("w") as log:
        start = time.monotonic()
        try:
            _run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=tmp_path, log=log,
                 timeout=300)  # no system site-packages
            _run([str(python), "-m", "pip", "install", "-r", requirements], env=env, cwd=tmp_path, log=log,
                 timeout=3600)
            installed = time.monotonic() - start
            out = _run([str(python), "-c", _LOAD_AND_PREDICT, registered_model.model_uri,
                        str(tmp_path / "image.png")], env=env, cwd=tmp_path, log=log, timeout=600)
        finally:
            shutil.rmtree(venv, ignore_errors=True)  # ~6 GB with torch's CUDA libraries; the log stays
    result = json.loads(out.stdout.splitlines()[-1])
    print(f"\nfresh environment: venv + pip install {installed:.0f} s, load + predict {result['seconds']:.0f} s, "
          f"in all {time.monotonic() - start:.0f} s")

    assert result["importable_before"] == {"pipeline": False, "detector": False, "faster_coco_eval": False}
    assert f"{os.sep}code{os.sep}pipeline{os.sep}" in result["pipeline"]  # the code logged with the model
    (row,) = result["rows"]
    (want,) = expected
    assert (row["width"], row["height"], row["labels"], row["class_names"]) == (
        want["width"], want["height"], want["labels"], want["class_names"])
    assert row["scores"] == pytest.approx(want["scores"], abs=1e-4)
    assert [v for box in row["boxes"] for v in box] == pytest.approx([v for box in want["boxes"] for v in box],
                                                                     abs=0.02)

"""The served model's requirements are what its code imports, and loading it imports nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from pipeline.serving.requirements import imported_libraries, requirements

# What training, evaluation, sweeps and the DVC pipeline need, and the served model does not:
# distribution -> top-level module.
NOT_SERVING = {"faster-coco-eval": "faster_coco_eval", "pycocotools": "pycocotools", "ray": "ray", "dvc": "dvc",
               "dvclive": "dvclive", "optuna": "optuna", "matplotlib": "matplotlib", "tqdm": "tqdm"}
# Of those, what loading the model must not even import (MLflow itself imports tqdm, for one).
NOT_IMPORTED = ("faster_coco_eval", "pycocotools", "ray", "dvc", "dvclive", "optuna", "pipeline.evaluation")


def _pins(lines: list[str]) -> dict[str, str]:
    return dict(line.split("==") for line in lines)


def test_requirements_are_the_distributions_the_model_code_imports_pinned():
    pins = _pins(requirements())
    assert {"torch", "torchvision", "mlflow", "pillow", "numpy", "pandas", "pyyaml"} <= set(pins)
    assert not set(NOT_SERVING) & set(pins)
    assert "mlflow-skinny" not in pins and "mlflow-tracing" not in pins  # mlflow depends on both
    assert all(version == metadata.version(name).partition("+")[0] for name, version in pins.items())
    assert not set(NOT_SERVING.values()) & set(imported_libraries())


def _tree(root: Path, model_code: str) -> Path:
    for name, text in {"pipeline/__init__.py": "", "pipeline/serving/__init__.py": "",
                       "pipeline/serving/model_code.py": model_code, "pipeline/serving/model.py": "import PIL\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_requirements_follow_the_imports_and_name_an_unknown_module(tmp_path):
    root = _tree(tmp_path, "import os\nimport mlflow.pyfunc\nfrom pipeline.serving import model\n\n"
                           "def load():\n    import yaml\n")
    assert requirements(root=root) == [f"mlflow=={metadata.version('mlflow')}",
                                       f"pillow=={metadata.version('pillow')}",
                                       f"pyyaml=={metadata.version('pyyaml')}"]
    (root / "pipeline/serving/model.py").write_text("import surely_not_installed_lib\n")
    with pytest.raises(ModuleNotFoundError, match=r"pipeline/serving/model.py imports 'surely_not_installed_lib'"):
        requirements(root=root)


# Run in a fresh interpreter: load the registered model, predict, list what got imported.
_LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
rows = model.predict(pd.DataFrame({"image": [open(sys.argv[2], "rb").read()]}))
print(json.dumps({"rows": len(rows), "modules": sorted(sys.modules)}))
"""


@pytest.mark.slow
def test_the_logged_model_lists_them_and_loads_without_evaluation_code(registered_model, tmp_path, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_model.tracking_uri)
    logged = mlflow.pyfunc.get_model_dependencies(registered_model.model_uri)  # its requirements.txt
    assert Path(logged).read_text().split() == requirements()

    (tmp_path / "image.png").write_bytes(registered_model.image)
    out = subprocess.run([sys.executable, "-c", _LOAD_AND_PREDICT, registered_model.model_uri,
                          str(tmp_path / "image.png")], capture_output=True, text=True, timeout=300,
                         env=os.environ)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["rows"] == 1
    unwanted = [m for m in result["modules"] if any(m == n or m.startswith(f"{n}.") for n in NOT_IMPORTED)]
    assert not unwanted, unwanted

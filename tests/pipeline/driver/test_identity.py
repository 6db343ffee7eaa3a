"""Run identity (pipeline/driver/identity.py), the state root, and dvc.yaml agreeing with both.

The file sets are computed here from the tree as it is (the import graph), never written down,
so the parametrized tests follow the code as modules are added, moved or stop being imported.
"""

import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.driver import identity, storage
from pipeline.driver.identity import (
    PROJECT_PACKAGES,
    SWEEP_ENTRIES,
    SWEEP_SKIP,
    TRAINING_ENTRIES,
    code_files,
    top_level_imports,
)

REPO = Path(__file__).resolve().parents[3]
DVC_FILES = ("dvc.yaml", "sweeps/dvc.yaml")
NEUTRAL = ("pipeline/driver/", "pipeline/tracking/")  # where runs start, what is recorded

# What the workers import (the training identity), and what the `train` stage imports besides:
# the driver side, tracking, serving and the stage itself.
TRAINING_FILES = code_files(TRAINING_ENTRIES, root=REPO)
STAGE_ONLY_FILES = sorted(set(code_files(("pipeline.train",), root=REPO)) - set(TRAINING_FILES))


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def fake_tree(tmp_path):
    """Packages ``fake`` and ``other`` in a folder, never imported: the walker only reads them."""
    return _write(tmp_path, {
        "fake/__init__.py": "",
        "fake/top.py": (
            "import os\n"
            "import fake.sub.a\n"                           # absolute: fake/sub/__init__.py and fake/sub/a.py
            "from . import rel\n"                           # relative, and a submodule by name
            "from fake.sub import b\n"                      # a submodule by name
            "from fake.leaf import LEAF\n"                  # a name from a module
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from fake import typing_only\n"            # never runs
            "    import numpy\n"
            "else:\n"
            "    from fake import runtime_only\n"
            "from fake.layer import x\n"                    # a package the tests skip
            "import other.thing\n"                          # not a project package
            "\n"
            "def build():\n"
            "    from .lazy import thing\n"                 # lazily, in a function
            "    return thing\n"),
        "fake/rel.py": "",
        "fake/leaf.py": "LEAF = 1\n",
        "fake/lazy.py": "thing = 1\n",
        "fake/typing_only.py": "",
        "fake/runtime_only.py": "",
        "fake/unused.py": "",
        "fake/sub/__init__.py": "",
        "fake/sub/a.py": "from .. import deep\n",        # two levels up: fake.deep
        "fake/sub/b.py": "",
        "fake/deep.py": "",
        "fake/layer/__init__.py": "",
        "fake/layer/x.py": "from fake import behind_layer\n",
        "fake/behind_layer.py": "",
        "other/thing.py": "",
    })


def test_code_files_follow_every_import_that_runs(fake_tree):
    found = code_files(("fake.top",), root=fake_tree, packages=("fake",))
    assert found == ["fake/__init__.py", "fake/behind_layer.py", "fake/deep.py", "fake/layer/__init__.py",
                     "fake/layer/x.py", "fake/lazy.py", "fake/leaf.py", "fake/rel.py", "fake/runtime_only.py",
                     "fake/sub/__init__.py", "fake/sub/a.py", "fake/sub/b.py", "fake/top.py"]
    skipped = code_files(("fake.top",), skip=("fake.layer",), root=fake_tree, packages=("fake",))
    assert skipped == sorted(set(found) - {"fake/layer/__init__.py", "fake/layer/x.py", "fake/behind_layer.py"})
    assert code_files(("fake.sub.b",), root=fake_tree, packages=("fake",)) == [
        "fake/__init__.py", "fake/sub/__init__.py", "fake/sub/b.py"]  # a module runs its packages' __init__
    with_other = code_files(("fake.top",), root=fake_tree, packages=("fake", "other"))
    assert set(with_other) - set(found) == {"other/thing.py"}  # `other` has no __init__.py: a namespace package


def test_top_level_imports_are_the_absolute_imports_that_run(fake_tree):
    found = top_level_imports(["fake/top.py", "fake/sub/a.py", "fake/layer/x.py"], root=fake_tree)
    assert found == {"fake": ["fake/layer/x.py", "fake/top.py"], "os": ["fake/top.py"], "other": ["fake/top.py"],
                     "typing": ["fake/top.py"]}  # not numpy (TYPE_CHECKING); fake/sub/a.py imports relatively


def test_code_files_name_what_is_missing(fake_tree):
    with pytest.raises(ModuleNotFoundError, match="entry module 'fake.nope'"):
        code_files(("fake.top", "fake.nope"), root=fake_tree, packages=("fake",))
    (fake_tree / "fake" / "lazy.py").write_text("def f():\n    import fake.gone\n")
    with pytest.raises(ModuleNotFoundError, match="fake/lazy.py imports 'fake.gone'"):
        code_files(("fake.top",), root=fake_tree, packages=("fake",))


def test_training_identity_is_what_the_workers_import():
    assert "pipeline/training/worker.py" in TRAINING_FILES and "detector/model.py" in TRAINING_FILES
    assert "pipeline/data/batching.py" in TRAINING_FILES  # the sampler a stale identity once left out
    assert "pipeline/train.py" not in TRAINING_FILES and "pipeline/tracking/live.py" not in TRAINING_FILES


def test_training_identity_has_no_driver_or_tracking_code():
    """The worker side imports neither layer above it: where runs are launched and what is recorded
    do not change a trained model."""
    assert [f for f in TRAINING_FILES if f.startswith(NEUTRAL)] == []


def test_sweep_identity_is_the_workers_and_the_sweeps_code():
    files = set(code_files(SWEEP_ENTRIES, skip=SWEEP_SKIP, root=REPO))
    assert {f for f in TRAINING_FILES if not f.startswith(NEUTRAL)} <= files
    assert {"pipeline/tuning/sweep.py", "pipeline/tuning/trial.py", "pipeline/data/anchor_fit.py"} <= files
    assert not {f for f in files if f.startswith(NEUTRAL)}


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory):
    """A copy of detector/ and pipeline/ and its training code fingerprint, made once for the module."""
    root = tmp_path_factory.mktemp("tree")
    for package in PROJECT_PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root, identity.code_fingerprint(TRAINING_ENTRIES, root=root)


@pytest.fixture
def edit_in_copy(tree_copy):
    """``edit(name)`` appends a comment to a file of the copy and returns the new training fingerprint;
    the file is restored afterwards."""
    root, _ = tree_copy
    originals: dict[Path, bytes] = {}

    def edit(name: str) -> str:
        path = root / name
        originals.setdefault(path, path.read_bytes())
        path.write_bytes(originals[path] + b"\n# an edit\n")
        return identity.code_fingerprint(TRAINING_ENTRIES, root=root)

    yield edit
    for path, content in originals.items():
        path.write_bytes(content)


@pytest.mark.parametrize("name", TRAINING_FILES)
def test_an_edit_to_the_training_code_changes_the_identity(name, tree_copy, edit_in_copy):
    assert edit_in_copy(name) != tree_copy[1]


@pytest.mark.parametrize("name", STAGE_ONLY_FILES)
def test_an_edit_outside_the_workers_code_keeps_the_identity(name, tree_copy, edit_in_copy):
    assert edit_in_copy(name) == tree_copy[1]


def test_identity_covers_code_and_library_versions(tiny_params, tiny_coco, monkeypatch):
    keyed = identity.result_params(tiny_params())
    assert set(keyed) == set(identity.RESULT_PARAMS)
    base = identity.run_identity(keyed, tiny_coco)
    assert base == identity.run_identity(keyed, tiny_coco) and len(base.digest()) == 12
    assert base.code == identity.code_fingerprint(TRAINING_ENTRIES)
    assert base.torch == identity.library_versions()["torch"] != "missing"
    monkeypatch.setattr(identity, "code_fingerprint", lambda entries, skip=(): "0" * 64)
    edited = identity.run_identity(keyed, tiny_coco)
    assert edited.digest() != base.digest() and edited.differences(base.to_dict()) == ["code"]
    monkeypatch.setattr(identity, "library_versions", lambda: {"torch": "9.9", "torchvision": "0.1"})
    upgraded = identity.run_identity(keyed, tiny_coco)
    assert upgraded.differences(edited.to_dict()) == ["torch", "torchvision"]
    assert upgraded.tags()["torch_version"] == "9.9"


def _stages() -> list[tuple[str, str]]:
    return [(dvc_file, name) for dvc_file in DVC_FILES
            for name in yaml.safe_load((REPO / dvc_file).read_text())["stages"]]


def _stage_entry(cmd: str) -> str:
    """The module a stage runs: ``python -m pipeline train`` runs ``pipeline.train`` (through the
    command line, which no stage depends on; see dvc.yaml), ``python -m pipeline.data.fingerprint`` that module."""
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"], f"a stage command this test cannot read: {cmd!r}"
    return f"pipeline.{words[3]}" if words[2] == "pipeline" else words[2]


def _code_deps(dvc_file: str, stage: dict) -> dict[str, str]:
    """``{file: the dep that names it}`` for the stage's deps in detector/ and pipeline/; a folder
    stands for every ``*.py`` under it."""
    wdir = (REPO / dvc_file).parent / stage.get("wdir", ".")
    files = {}
    for dep in stage["deps"]:
        path = (wdir / dep).resolve()
        name = path.relative_to(REPO).as_posix()
        if name.split("/")[0] not in PROJECT_PACKAGES:
            continue
        found = [p for p in sorted(path.rglob("*.py")) if "__pycache__" not in p.parts] if path.is_dir() else [path]
        files.update((p.relative_to(REPO).as_posix(), name) for p in found)
    return files


@pytest.mark.parametrize(("dvc_file", "name"), _stages(), ids=[f"{f}:{n}" for f, n in _stages()])
def test_stage_code_deps_are_what_the_stage_imports(dvc_file, name):
    stage = yaml.safe_load((REPO / dvc_file).read_text())["stages"][name]
    entry = _stage_entry(stage["cmd"])
    imported = set(code_files((entry,), root=REPO))
    declared = _code_deps(dvc_file, stage)
    problems = [f"add {f} ({entry} imports it)" for f in sorted(imported - set(declared))]
    for f in sorted(set(declared) - imported):
        dep = declared[f]
        problems.append(f"remove {f} ({entry} does not import it)" if dep == f else
                        f"list the imported files of {dep} instead of the folder ({entry} does not import {f})")
    assert not problems, f"{dvc_file}, stage {name!r}, deps: " + "; ".join(problems)


def test_dvc_train_params_are_what_the_identity_keys():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    train = stages["train"]
    assert set(identity.RESULT_PARAMS) <= set(train["params"])
    infrastructure = {"ray", "mlflow", "ray.address", "ray.storage_path", "mlflow.tracking_uri", "ray.max_failures",
                      "ray.cpus_per_worker", "ray.checkpoints_to_keep", "ray.checkpoint_score_attribute",
                      "mlflow.system_metrics", "mlflow.system_metrics_interval_s"}
    assert not infrastructure & set(train["params"]), "infrastructure keys must not rerun `train`"
    assert "models/mlflow_run.json" in stages["evaluate"]["deps"]


def test_state_root_is_the_dvc_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert storage.state_root() == tmp_path.resolve()
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(repo))  # dvc exp run --temp: the real repository, not the copy
    assert storage.state_root(tmp_path / "copy") == repo.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "gone"))
    assert storage.state_root() == tmp_path.resolve()


def test_sweep_name_follows_the_sweep_code(tiny_params, tiny_coco, monkeypatch):
    from pipeline.tuning.sweep import experiment_name

    params = tiny_params()
    name = experiment_name(params, tiny_coco)
    assert name == experiment_name(tiny_params("tune.max_concurrent_trials=4", "ray.storage_path=/x"), tiny_coco)
    seen = []
    monkeypatch.setattr(identity, "code_fingerprint", lambda entries, skip=(): seen.append((entries, skip)) or "f" * 64)
    assert experiment_name(params, tiny_coco) != name and seen == [(SWEEP_ENTRIES, SWEEP_SKIP)]

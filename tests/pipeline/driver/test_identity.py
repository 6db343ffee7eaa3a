"""Run identity (pipeline/driver/identity.py), the state root, and dvc.yaml agreeing with both."""

import sys
from pathlib import Path

import pytest
import yaml

from pipeline.driver import identity, storage

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package ``fakepkg`` with a subpackage, to edit without touching the project."""
    root = tmp_path / "src"
    (root / "fakepkg" / "sub").mkdir(parents=True)
    (root / "fakepkg" / "__init__.py").write_text("")
    (root / "fakepkg" / "top.py").write_text("X = 1\n")
    (root / "fakepkg" / "sub" / "a.py").write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(root))
    yield root / "fakepkg"
    sys.modules.pop("fakepkg", None)


def test_code_fingerprint_follows_the_source(fake_package):
    whole = identity.code_fingerprint(("fakepkg",))
    sub = identity.code_fingerprint(("fakepkg/sub",))
    single = identity.code_fingerprint(("fakepkg/top.py",))
    assert len({whole, sub, single}) == 3
    (fake_package / "__pycache__").mkdir()
    (fake_package / "__pycache__" / "top.cpython-311.pyc").write_bytes(b"\0")
    (fake_package / "notes.txt").write_text("not code")
    assert identity.code_fingerprint(("fakepkg",)) == whole  # caches and non-Python files do not count
    (fake_package / "sub" / "a.py").write_text("A = 1  # a comment is a change\n")
    assert identity.code_fingerprint(("fakepkg",)) != whole
    assert identity.code_fingerprint(("fakepkg/sub",)) != sub
    assert identity.code_fingerprint(("fakepkg/top.py",)) == single
    (fake_package / "sub" / "a.py").rename(fake_package / "sub" / "b.py")  # a rename is a change too
    assert identity.code_fingerprint(("fakepkg/sub",)) not in (sub, identity.code_fingerprint(("fakepkg/top.py",)))
    with pytest.raises(FileNotFoundError, match="fakepkg/missing"):
        identity.code_fingerprint(("fakepkg/missing",))


def test_identity_covers_code_and_library_versions(tiny_params, tiny_coco, monkeypatch):
    keyed = identity.result_params(tiny_params())
    assert set(keyed) == set(identity.RESULT_PARAMS)
    base = identity.run_identity(keyed, tiny_coco)
    assert base == identity.run_identity(keyed, tiny_coco) and len(base.digest()) == 12
    assert base.torch == identity.library_versions()["torch"] != "missing"
    monkeypatch.setattr(identity, "code_fingerprint", lambda entries=identity.TRAINING_CODE: "0" * 64)
    edited = identity.run_identity(keyed, tiny_coco)
    assert edited.digest() != base.digest() and edited.differences(base.to_dict()) == ["code"]
    monkeypatch.setattr(identity, "library_versions", lambda: {"torch": "9.9", "torchvision": "0.1"})
    upgraded = identity.run_identity(keyed, tiny_coco)
    assert upgraded.differences(edited.to_dict()) == ["torch", "torchvision"]
    assert upgraded.tags()["torch_version"] == "9.9"


def test_dvc_stages_list_what_the_identity_hashes():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    train = stages["train"]
    assert set(identity.RESULT_PARAMS) <= set(train["params"])
    infrastructure = {"ray", "mlflow", "ray.address", "ray.storage_path", "mlflow.tracking_uri", "ray.max_failures",
                      "ray.cpus_per_worker", "ray.checkpoints_to_keep", "ray.checkpoint_score_attribute",
                      "mlflow.system_metrics", "mlflow.system_metrics_interval_s"}
    assert not infrastructure & set(train["params"]), "infrastructure keys must not rerun `train`"
    for entry in identity.TRAINING_CODE:
        assert entry in train["deps"], f"dvc.yaml train stage does not depend on {entry}"
    assert "models/mlflow_run.json" in stages["evaluate"]["deps"]
    sweep_deps = yaml.safe_load((REPO / "sweeps" / "dvc.yaml").read_text())["stages"]["tune"]["deps"]
    for entry in identity.SWEEP_CODE:
        assert entry in sweep_deps, f"sweeps/dvc.yaml does not depend on {entry}"


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
    monkeypatch.setattr(identity, "code_fingerprint", lambda entries: seen.append(entries) or "f" * 64)
    assert experiment_name(params, tiny_coco) != name and seen == [identity.SWEEP_CODE]

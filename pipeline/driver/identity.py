"""What a training result depends on, and the run identity built from it.

A training run (and a sweep) is named from a hash of everything its result depends on:

- the params that change the result (:data:`RESULT_PARAMS`: the model, the recipe, the
  training resize, the worker count, which sets the global batch, and the device),
- the prepared data (``train.json`` and ``val.json``),
- the code (:data:`TRAINING_CODE`: the source files of the packages the result is computed by),
- the versions of torch and torchvision.

So a rerun with identical inputs finds the same Ray run (resumed if unfinished, reused if
finished), and changing any of them (a code edit included) starts a new run instead of
resuming the old one. Where things are stored or tracked, how many failures are survived and
how many checkpoints are kept do not change the result and are left out; ``dvc.yaml`` lists
the same keys and code for the ``train`` stage (``tests/pipeline/training/test_identity.py``
checks that).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.params import Params

__all__ = ["RESULT_PARAMS", "SWEEP_CODE", "TRAINING_CODE", "RunIdentity", "code_fingerprint", "data_fingerprint",
           "library_versions", "result_params", "run_identity", "source_dir"]

# Dotted params keys the trained model depends on (and the dvc.yaml `train` stage lists).
RESULT_PARAMS = ("data.resize", "model", "train", "ray.num_workers", "ray.use_gpu")

# Source the trained model depends on, as "<top-level package>[/sub/path]": the library, the
# training loop and driver, the dataset and its transforms, and the validation (its AP is in
# the history and can pick the kept checkpoint). Not the stage scripts (pipeline/train.py):
# how outputs are written does not change the model.
TRAINING_CODE = ("detector", "pipeline/training", "pipeline/data/dataset.py", "pipeline/data/transforms.py",
                 "pipeline/evaluation")
# A sweep's results also depend on the sweep itself and the anchor fit its trials report.
SWEEP_CODE = (*TRAINING_CODE, "pipeline/tuning", "pipeline/data/anchor_fit.py")

_LIBRARIES = ("torch", "torchvision")


def source_dir(package: str) -> Path:
    """The folder a top-level package (``detector``, ``pipeline``) is imported from."""
    module = importlib.import_module(package)
    return Path(module.__file__).resolve().parent


def code_fingerprint(entries: tuple[str, ...] = TRAINING_CODE) -> str:
    """SHA-256 over the relative paths and contents of the ``*.py`` files under ``entries``.

    Each entry is ``<package>[/path]``, located through the imported package, so the
    fingerprint is of the code that actually runs (and that :mod:`pipeline.driver.cluster`
    ships to the workers).
    """
    h = hashlib.sha256()
    for entry in sorted(entries):
        package, _, rest = entry.partition("/")
        base = source_dir(package)
        target = base / rest if rest else base
        if target.is_file():
            files = [target]
        elif target.is_dir():
            files = sorted(p for p in target.rglob("*.py") if "__pycache__" not in p.parts)
        else:
            raise FileNotFoundError(f"code fingerprint: {target} (from {entry!r}) does not exist")
        for path in files:
            h.update(f"{package}/{path.relative_to(base).as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def data_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 over the prepared splits' JSON files (``train.json``, ``val.json``)."""
    h = hashlib.sha256()
    for split in ("train.json", "val.json"):
        path = Path(data_dir) / split
        h.update(split.encode() + b"\0")
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries the numbers depend on (from package metadata)."""
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def result_params(params: Params, keys: tuple[str, ...] = RESULT_PARAMS) -> dict[str, Any]:
    """``{dotted key: value}`` of the params the result depends on."""
    tree = params.to_dict()
    out = {}
    for key in keys:
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


@dataclass(frozen=True)
class RunIdentity:
    """Fingerprints of the inputs of one training run (or sweep); equal identities, equal results."""

    params: str
    data: str
    code: str
    torch: str
    torchvision: str

    def digest(self) -> str:
        """12 hex digits: the run (or sweep) name suffix."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def differences(self, other: dict[str, Any] | None) -> list[str]:
        """Names of the fields that differ from ``other`` (a :meth:`to_dict`), e.g. ``["code"]``."""
        other = other or {}
        return [k for k, v in asdict(self).items() if other.get(k) != v]

    def tags(self) -> dict[str, str]:
        """MLflow tags: which inputs made this run."""
        return {"params_hash": self.params[:12], "data_hash": self.data[:12], "code_fingerprint": self.code[:12],
                "torch_version": self.torch, "torchvision_version": self.torchvision}


def run_identity(keyed_params: dict[str, Any], data_dir: str | Path, *,
                 code: tuple[str, ...] = TRAINING_CODE) -> RunIdentity:
    """The identity of a training (or sweep) on ``data_dir`` with the code in ``code``.

    ``keyed_params``: the result-changing settings, e.g. :func:`result_params` of the params
    (a sweep adds its search space and trial settings).
    """
    params_digest = hashlib.sha256(json.dumps(keyed_params, sort_keys=True, default=str).encode()).hexdigest()
    versions = library_versions()
    return RunIdentity(params=params_digest, data=data_fingerprint(data_dir), code=code_fingerprint(code),
                       torch=versions["torch"], torchvision=versions["torchvision"])

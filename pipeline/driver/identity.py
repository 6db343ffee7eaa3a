"""What a training result depends on, and the run identity built from it.

A training run (and a sweep) is named from a hash of everything its result depends on:

- the params that change the result (:data:`RESULT_PARAMS`: the model, the recipe, the
  training resize and EXIF rule, the worker count, which sets the global batch, and the device),
- the prepared data (``train.json`` and ``val.json``),
- the code: the project files the workers import (:data:`TRAINING_ENTRIES`), found by
  :func:`code_files` from the import graph,
- the versions of torch and torchvision.

So a rerun with identical inputs finds the same Ray run (resumed if unfinished, reused if
finished), and changing any of them (an edit to that code included) starts a new run instead
of resuming the old one. Where things are stored or tracked, how many failures are survived and
how many checkpoints are kept do not change the result and are left out: so is the code of
the driver side (:mod:`pipeline.driver`) and of tracking (:mod:`pipeline.tracking`), which the
workers do not import. ``tests/pipeline/driver/test_identity.py`` checks that ``dvc.yaml``'s
stages depend on exactly the files their modules import, by the same :func:`code_files`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.params import Params

__all__ = ["PROJECT_PACKAGES", "RESULT_PARAMS", "SWEEP_ENTRIES", "SWEEP_SKIP", "TRAINING_ENTRIES", "RunIdentity",
           "code_files", "code_fingerprint", "data_fingerprint", "library_versions", "result_params", "run_identity",
           "source_dir", "top_level_imports"]

# Dotted params keys the trained model depends on (and the dvc.yaml `train` stage lists).
RESULT_PARAMS = ("data.resize", "data.exif_orientation", "model", "train", "ray.num_workers", "ray.use_gpu")

# The top-level packages of this project: imports of anything else (torch, ray, ...) are
# covered by library_versions or not at all.
PROJECT_PACKAGES = ("detector", "pipeline")

# The module every training worker runs (train_loop_per_worker): what it imports, at any
# depth, is the code a trained model depends on.
TRAINING_ENTRIES = ("pipeline.training.worker",)
# A sweep's results also depend on the sweep and its trials (the anchor fit they report); not
# on where runs are launched (the driver side) or what is recorded (tracking).
SWEEP_ENTRIES = (*TRAINING_ENTRIES, "pipeline.tuning.sweep")
SWEEP_SKIP = ("pipeline.driver", "pipeline.tracking")

_LIBRARIES = ("torch", "torchvision")


def source_dir(package: str) -> Path:
    """The folder a top-level package (``detector``, ``pipeline``) is imported from."""
    module = importlib.import_module(package)
    return Path(module.__file__).resolve().parent


def _module_file(root: Path, module: str) -> Path | None:
    """``a/b.py`` or ``a/b/__init__.py`` under ``root`` for module ``a.b``; None if neither exists."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements in ``nodes`` at any depth, except in the body of ``if TYPE_CHECKING:``."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node))


@functools.lru_cache(maxsize=1024)
def _import_statements(source: bytes) -> tuple[tuple[int, str | None, tuple[str, ...]], ...]:
    """``(level, module, names)`` of each import in ``source``: ``import a.b`` is ``(0, None, ("a.b",))``,
    ``from ..a import b`` is ``(2, "a", ("b",))``. Cached by content: a walk reads the same files again."""
    return tuple((0, None, tuple(alias.name for alias in node.names)) if isinstance(node, ast.Import)
                 else (node.level, node.module, tuple(alias.name for alias in node.names))
                 for node in _import_nodes(ast.parse(source).body))


def _imports(root: Path, module: str, path: Path) -> set[str]:
    """The modules that ``module`` (source: ``path``) imports: ``import a.b`` imports ``a.b``,
    ``from a import b`` imports ``a``, and ``a.b`` too where that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for level, name, names in _import_statements(path.read_bytes()):
        if name is None and not level:  # import a.b
            found.update(names)
            continue
        source = name or ""
        if level:  # from . import x, from ..a import b
            parts = package.split(".")
            if level > len(parts):
                raise ImportError(f"{path}: a relative import goes above the top-level package")
            source = ".".join([*parts[: len(parts) - level + 1], *filter(None, [name])])
        found.add(source)
        found.update(f"{source}.{alias}" for alias in names if _module_file(root, f"{source}.{alias}") is not None)
    return found


def code_files(entries: tuple[str, ...], *, skip: tuple[str, ...] = (), root: str | Path | None = None,
               packages: tuple[str, ...] = PROJECT_PACKAGES) -> list[str]:
    """The project files that importing the ``entries`` modules runs: sorted paths relative to
    ``root``, e.g. ``["detector/__init__.py", ..., "pipeline/training/worker.py"]``.

    Found from the import statements in each module's source (parsed, never imported), at any
    depth, because modules import lazily inside functions; the body of ``if TYPE_CHECKING:``
    never runs and is not followed. Only modules of ``packages`` count, each with the
    ``__init__.py`` of every package above it (importing a module runs them first). Modules of
    the ``skip`` packages are neither followed nor listed.

    ``root``: the folder that holds the packages (default: the one ``pipeline`` is imported from).

    Raises:
        ModuleNotFoundError: an entry, or a module of ``packages`` that a listed one imports,
            has no source under ``root``.
    """
    root = Path(root) if root is not None else source_dir("pipeline").parent
    for entry in entries:
        if _module_file(root, entry) is None:
            raise ModuleNotFoundError(f"code files: the entry module {entry!r} has no source under {root}",
                                      name=entry)
    files: set[Path] = set()
    seen: set[str] = set()
    pending = [(entry, "the entries") for entry in entries]
    while pending:
        module, importer = pending.pop()
        if module in seen or not _within(module, packages) or _within(module, skip):
            continue
        seen.add(module)
        parent = module.rpartition(".")[0]
        if parent:
            pending.append((parent, importer))
        path = _module_file(root, module)
        if path is None:
            if root.joinpath(*module.split(".")).is_dir():
                continue  # a namespace package
            raise ModuleNotFoundError(f"code files: {importer} imports {module!r}, which has no source under {root}",
                                      name=module)
        files.add(path)
        pending.extend((imported, path.relative_to(root).as_posix()) for imported in _imports(root, module, path))
    return sorted(p.relative_to(root).as_posix() for p in files)


def top_level_imports(files: Iterable[str], *, root: str | Path | None = None) -> dict[str, list[str]]:
    """The top-level modules that ``files`` import by absolute name, each with the files that import it:
    ``{"torch": ["detector/anchors.py", ...], "os": [...], "pipeline": [...]}`` (sorted).

    ``files`` are paths relative to ``root`` as :func:`code_files` gives them. Same rules as
    :func:`code_files`: imports at any depth count (lazy ones inside functions too), the body of
    ``if TYPE_CHECKING:`` does not; relative imports stay inside their package and are left out.
    """
    root = Path(root) if root is not None else source_dir("pipeline").parent
    found: dict[str, set[str]] = {}
    for name in files:
        for level, module, names in _import_statements((root / name).read_bytes()):
            if level:
                continue
            for imported in names if module is None else (module,):  # import a.b, c / from a.b import x
                found.setdefault(imported.partition(".")[0], set()).add(name)
    return {module: sorted(importers) for module, importers in sorted(found.items())}


def code_fingerprint(entries: tuple[str, ...] = TRAINING_ENTRIES, *, skip: tuple[str, ...] = (),
                     root: str | Path | None = None) -> str:
    """SHA-256 over the relative paths and contents of :func:`code_files` of ``entries``.

    The files are read where the imported ``pipeline`` lives (or under ``root``), so the
    fingerprint is of the code that actually runs (and that :mod:`pipeline.driver.cluster`
    ships to the workers).
    """
    root = Path(root) if root is not None else source_dir("pipeline").parent
    h = hashlib.sha256()
    for name in code_files(entries, skip=skip, root=root):
        h.update(f"{name}\0".encode())
        h.update((root / name).read_bytes())
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
                 entries: tuple[str, ...] = TRAINING_ENTRIES, skip: tuple[str, ...] = ()) -> RunIdentity:
    """The identity of a training (or sweep) on ``data_dir`` with the code that ``entries`` import
    (:func:`code_fingerprint`; ``skip``: packages not followed).

    ``keyed_params``: the result-changing settings, e.g. :func:`result_params` of the params
    (a sweep adds its search space and trial settings).
    """
    params_digest = hashlib.sha256(json.dumps(keyed_params, sort_keys=True, default=str).encode()).hexdigest()
    versions = library_versions()
    return RunIdentity(params=params_digest, data=data_fingerprint(data_dir), code=code_fingerprint(entries, skip=skip),
                       torch=versions["torch"], torchvision=versions["torchvision"])

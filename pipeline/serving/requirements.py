"""The served model's pip requirements: the distributions its code imports, pinned to the installed versions.

Derived, not listed: the project files that :data:`SERVING_ENTRIES` (the models-from-code file MLflow
runs when it loads the model) import at any depth (:func:`pipeline.driver.identity.code_files`), the
third-party top-level modules those files import (lazy imports included; the standard library and
this project's packages left out), and for each module the installed distribution that provides it
(``importlib.metadata.packages_distributions()``), as ``name==version``. As MLflow does when it
infers requirements, a local version label is dropped (``torch==2.5.1+cu124`` -> ``torch==2.5.1``)
so that the pin installs from PyPI. A module that several distributions provide (``mlflow``:
``mlflow``, ``mlflow-skinny``, ``mlflow-tracing``) is required through the one that depends on the
others (``mlflow``).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from pipeline.driver.identity import PROJECT_PACKAGES, code_files, top_level_imports

__all__ = ["SERVING_ENTRIES", "imported_libraries", "requirements"]

# The module MLflow runs to load the served model (``python_model=`` of the logged model).
SERVING_ENTRIES = ("pipeline.serving.model_code",)


def imported_libraries(entries: tuple[str, ...] = SERVING_ENTRIES, *,
                       root: str | Path | None = None) -> dict[str, list[str]]:
    """The third-party top-level modules the code of ``entries`` imports, each with the project files
    that import it: ``{"PIL": ["pipeline/inference/images.py", ...], "torch": [...], ...}``."""
    found = top_level_imports(code_files(entries, root=root), root=root)
    return {module: files for module, files in found.items()
            if module not in sys.stdlib_module_names and module not in PROJECT_PACKAGES}


def requirements(entries: tuple[str, ...] = SERVING_ENTRIES, *, root: str | Path | None = None) -> list[str]:
    """``["mlflow==3.17.2", "numpy==2.4.6", ...]``: the distributions of :func:`imported_libraries`, pinned.

    Raises:
        ModuleNotFoundError: a module that no installed distribution provides, named with the file
            that imports it (the model would not install without it).
    """
    providers = metadata.packages_distributions()
    pinned = set()
    for module, importers in imported_libraries(entries, root=root).items():
        if not providers.get(module):
            raise ModuleNotFoundError(f"served model requirements: {importers[0]} imports {module!r}, which no "
                                      "installed distribution provides", name=module)
        pinned.update(f"{name}=={_public_version(metadata.version(name))}" for name in _outermost(providers[module]))
    return sorted(pinned)


def _normalized(name: str) -> str:
    """The PEP 503 form of a distribution name: ``PyYAML`` -> ``pyyaml``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _outermost(distributions: list[str]) -> list[str]:
    """Of the distributions that provide one module, those no other of them requires (extras aside)."""
    from packaging.requirements import Requirement

    names = {_normalized(name) for name in distributions}
    required = set()
    for name in names:
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                required.add(_normalized(requirement.name))
    return sorted(names - required) or sorted(names)


def _public_version(version: str) -> str:
    """``2.5.1+cu124`` -> ``2.5.1``: the local label names a build that PyPI does not have."""
    return version.partition("+")[0]

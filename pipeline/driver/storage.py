"""Where runs live: the project's state root, the Ray storage path, small JSON files in it.

``ray.storage_path`` is a local folder (which on a multi-node cluster must be a shared
filesystem mounted at the same path on every node) or a ``pyarrow``-supported URI
(``s3://``, ``gs://``, ...). The helpers here read and write both.

The state root is where the defaults live (``ray_results/``, ``mlflow.db``, ``mlruns/``): the
DVC repository (``DVC_ROOT``, which DVC sets for every stage and, under ``dvc exp run
--temp/--queue``, points at the real repository rather than the temporary copy that DVC
deletes afterwards), else the current folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

__all__ = ["StorageError", "check_writable", "exists", "join", "read_json", "remove", "resolve_storage_path",
           "state_root", "write_json", "write_probe"]


class StorageError(RuntimeError):
    """The storage path cannot be used (not writable, not reachable)."""


def state_root(cwd: str | Path | None = None) -> Path:
    """``$DVC_ROOT`` when it names a folder (a DVC stage or experiment), else ``cwd`` (default: ``.``)."""
    root = os.environ.get("DVC_ROOT")
    if root and Path(root).is_dir():
        return Path(root).resolve()
    return Path(cwd if cwd is not None else ".").resolve()


def resolve_storage_path(storage_path: str | None, root: str | Path = ".") -> str:
    """``ray.storage_path`` as an absolute path (or URI); default ``<root>/ray_results``."""
    if not storage_path:
        return str((Path(root) / "ray_results").resolve())
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def exists(path: str) -> bool:
    if "://" in path:
        import pyarrow.fs

        fs, p = _fs(path)
        return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound
    return Path(path).exists()


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when there is no such file."""
    if "://" in path:
        fs, p = _fs(path)
        try:
            with fs.open_input_stream(p) as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None
    file = Path(path)
    return json.loads(file.read_text()) if file.is_file() else None


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` (atomically for local paths)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if "://" in path:
        fs, p = _fs(path)
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as f:
            f.write(text.encode())
        return
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, file)


def remove(path: str) -> None:
    """Delete a file or folder tree; missing is fine."""
    if "://" in path:
        import pyarrow.fs

        fs, p = _fs(path)
        info = fs.get_file_info(p)
        if info.type == pyarrow.fs.FileType.Directory:
            fs.delete_dir(p)
        elif info.type == pyarrow.fs.FileType.File:
            fs.delete_file(p)
    elif Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def write_probe(storage_path: str) -> str:
    """Create a small uniquely named file in ``storage_path``; returns its path.

    Raises:
        StorageError: the folder cannot be created or written.
    """
    probe = join(storage_path, f".detpipe-probe-{uuid.uuid4().hex[:12]}")
    try:
        if "://" in storage_path:
            fs, p = _fs(storage_path)
            fs.create_dir(p, recursive=True)
            with fs.open_output_stream(_fs(probe)[1]) as f:
                f.write(b"ok")
        else:
            Path(storage_path).mkdir(parents=True, exist_ok=True)
            Path(probe).write_text("ok")
    except Exception as err:
        raise StorageError(f"ray.storage_path {storage_path} is not writable ({type(err).__name__}: {err}); "
                           f"every node needs write access to it (a shared filesystem or s3://...)") from err
    return probe


def check_writable(storage_path: str) -> None:
    """Raise :class:`StorageError` unless a file can be written to (and removed from) ``storage_path``."""
    remove(write_probe(storage_path))

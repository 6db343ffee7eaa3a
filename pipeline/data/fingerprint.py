"""Content fingerprint of the source annotation files that ``params.yaml`` names, for DVC.

DVC reruns a stage when one of its ``deps`` changes, but the COCO / VOC paths are params, and
they are ``null`` for the synthetic default: ``${data.coco.train_annotations}`` in ``deps:``
then breaks ``dvc repro`` (DVC 3.67: "unexpected error" for an exact ``${...}`` of a null; a
path with the null inside becomes a missing ``None`` dependency). So the ``sources`` stage of
``dvc.yaml`` (``always_changed``, ~0.1 s) runs::

    python -m pipeline.data.fingerprint [--params params.yaml] [--out data/source_fingerprint.json]

which writes the size and MD5 of every source annotation file (COCO: the train/val JSONs;
VOC: ``Annotations/`` and ``ImageSets/Main/``). ``prepare`` depends on that file, so it reruns
exactly when the annotations change; a file that was only touched does not rerun it. Images are
not fingerprinted (hashing every photograph at every ``dvc repro`` would cost minutes): see the
README on tracking the image folder itself with ``dvc add``.

MD5s are reused while a file's size and modification time are unchanged (a stat cache next to
the output, like DVC's own), so a no-op ``dvc repro`` reads no annotation file.

This helper reads only ``data.source``, ``data.coco`` and ``data.voc.root`` from the params file,
with plain YAML, so that it runs without importing torch; ``prepare`` validates the whole section.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

DEFAULT_OUT = "data/source_fingerprint.json"


def source_files(data: dict[str, Any]) -> dict[str, list[Path]]:
    """Role -> files of the source named by a params ``data`` section (empty for synthetic)."""
    source = data.get("source", "synthetic")
    if source == "coco":
        coco = data.get("coco") or {}
        return {key: [Path(coco[key])] for key in ("train_annotations", "val_annotations", "test_annotations")
                if coco.get(key)}
    if source == "voc":
        root = (data.get("voc") or {}).get("root")
        if not root:
            return {}
        root = Path(root)
        files = sorted((root / "Annotations").glob("*.xml")) if (root / "Annotations").is_dir() else []
        main = root / "ImageSets" / "Main"
        lists = sorted(main.glob("*.txt")) if main.is_dir() else []
        return {"annotations": files, "image_sets": lists}
    return {}


def fingerprint(data: dict[str, Any], cache: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fingerprint, new stat cache)``: per role the number of files, their total size and one MD5
    over their names and contents. A missing file is recorded as missing (``prepare`` says what
    is wrong with it)."""
    cache = cache or {}
    new_cache: dict[str, Any] = {}
    out: dict[str, Any] = {"source": data.get("source", "synthetic"), "files": {}}
    for role, files in source_files(data).items():
        digest, total, missing = hashlib.md5(), 0, []
        for path in files:
            key = str(path)
            try:
                st = path.stat()
            except OSError:
                missing.append(key)
                continue
            stamp = [st.st_size, st.st_mtime_ns]
            cached = cache.get(key)
            md5 = cached["md5"] if cached and cached.get("stat") == stamp else _md5(path)
            new_cache[key] = {"stat": stamp, "md5": md5}
            digest.update(f"{path.name}\0{md5}\0".encode())
            total += st.st_size
        out["files"][role] = {"count": len(files), "bytes": total, "md5": digest.hexdigest(), "missing": missing}
    return out, new_cache


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(params_path: str | Path, out: str | Path) -> dict[str, Any]:
    raw = yaml.safe_load(Path(params_path).read_text()) or {}
    out = Path(out)
    cache_path = out.with_suffix(".cache.json")
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    result, new_cache = fingerprint(raw.get("data") or {}, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if not out.is_file() or out.read_text() != text:  # unchanged content: leave the file alone
        out.write_text(text)
    tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(new_cache))
    tmp.replace(cache_path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.fingerprint", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result = write(args.params, args.out)
    files = ", ".join(f"{role} {v['md5'][:8]}" for role, v in result["files"].items()) or "no annotation files"
    print(f"source {result['source']}: {files} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

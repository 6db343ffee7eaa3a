"""The source-annotation fingerprint that makes `dvc repro` rerun prepare (pipeline/data/fingerprint.py)."""

import json
import os

import yaml

from pipeline.data import fingerprint


def _params(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data, "train": {"epochs": 1}}))
    return path


def test_content_changes_change_it_touching_does_not(tmp_path, monkeypatch):
    ann = tmp_path / "ann.json"
    ann.write_text('{"images": []}')
    params = _params(tmp_path, {"source": "coco", "coco": {"train_annotations": str(ann), "val_annotations": None}})
    out = tmp_path / "data/source_fingerprint.json"
    first = fingerprint.write(params, out)
    text = out.read_text()
    assert first["files"]["train_annotations"]["count"] == 1 and list(first["files"]) == ["train_annotations"]

    calls = []
    monkeypatch.setattr(fingerprint, "_md5", lambda path: calls.append(path) or "x")
    fingerprint.write(params, out)
    assert calls == [] and out.read_text() == text  # unchanged size and mtime: the MD5 is not recomputed
    os.utime(ann, ns=(1, 1))
    monkeypatch.undo()
    fingerprint.write(params, out)
    assert out.read_text() == text  # touched, same content: same fingerprint
    ann.write_text('{"images": [1]}')
    assert fingerprint.write(params, out) != first


def test_synthetic_has_no_files_and_voc_covers_annotations_and_lists(tmp_path, voc_folder):
    out = tmp_path / "fp.json"
    assert fingerprint.write(_params(tmp_path, {"source": "synthetic", "coco": {"train_annotations": None}}), out)[
        "files"] == {}
    root = voc_folder(tmp_path / "VOC", {"a": [("dog", 0, 1, 1, 5, 5)], "b": [("cat", 0, 1, 1, 5, 5)]},
                      splits={"train": ["a"], "val": ["b"]})
    params = _params(tmp_path, {"source": "voc", "voc": {"root": str(root)}})
    first = fingerprint.write(params, out)["files"]
    assert (first["annotations"]["count"], first["image_sets"]["count"]) == (2, 2)
    (root / "Annotations" / "a.xml").write_text((root / "Annotations" / "a.xml").read_text().replace("dog", "cat"))
    assert fingerprint.write(params, out)["files"]["annotations"]["md5"] != first["annotations"]["md5"]
    assert json.loads(out.read_text())["source"] == "voc"

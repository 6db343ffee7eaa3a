"""Reading a Pascal VOC folder (pipeline/data/voc.py)."""

from collections import Counter

import pytest

from pipeline.data.errors import AnnotationError, DataError, InvalidBoxError
from pipeline.data.voc import read_voc


def _counts():
    return {"train": Counter(), "val": Counter()}


def test_voc_split_difficult_and_one_based_boxes(tmp_path, voc_folder):
    root = voc_folder(tmp_path / "VOC2012", {
        "2008_000001": [("dog", 0, 1, 1, 10, 20), ("cat", 1, 5, 6, 50, 40)],
        "2008_000002": [("person", 0, 3, 4, 3, 4)],
        "2008_000003": [("dog", 0, 20, 10, 30, 30)],
    }, splits={"train": ["2008_000001", "2008_000002"], "val": ["2008_000003"]})
    counts = _counts()
    train, val = read_voc(root, "error", counts, seed=0, val_fraction=0.5)
    assert train.class_names == ["cat", "dog", "person"]
    assert train.images.file_names == ["2008_000001.jpg", "2008_000002.jpg"]
    assert val.images.file_names == ["2008_000003.jpg"]
    b = train.boxes
    assert b.image.tolist() == [0, 0, 1]
    # xmin=1..xmax=10 (1-based, inclusive) covers 0-based pixels 0..9: x=0, w=10
    assert (b.xywh[0].tolist(), b.labels[0], b.iscrowd[0], b.difficult[0]) == ([0, 0, 10, 20], 2, 0, False)
    # the full-image box 5..50 x 6..40 ends exactly at the 50x40 border
    assert (b.xywh[1].tolist(), b.labels[1], b.iscrowd[1], b.difficult[1]) == ([4, 5, 46, 35], 1, 1, True)
    assert b.xywh[2].tolist() == [2, 3, 1, 1]  # a one-pixel box
    assert counts["train"]["difficult"] == 1
    assert train.images.path(0) == root / "JPEGImages" / "2008_000001.jpg"
    assert train.images.where(0).endswith("2008_000001.xml (image 2008_000001)")


def test_voc_without_split_files_uses_a_seeded_split(tmp_path, voc_folder):
    root = voc_folder(tmp_path / "voc", {f"im{i}": [("a", 0, 1, 1, 5, 5)] for i in range(10)})
    train, val = read_voc(root, "error", _counts(), seed=3, val_fraction=0.3)
    assert len(train.images) == 7 and len(val.images) == 3
    again = read_voc(root, "error", _counts(), seed=3, val_fraction=0.3)
    assert again[1].images.file_names == val.images.file_names
    ids = train.images.ids.tolist() + val.images.ids.tolist()
    assert len(set(ids)) == 10


def test_voc_class_subset_and_box_policy(tmp_path, voc_folder):
    root = voc_folder(tmp_path / "voc", {"a": [("dog", 0, 1, 1, 60, 10), ("cat", 0, 1, 1, 5, 5)],
                                        "b": [("dog", 0, 1, 1, 5, 5)]}, splits={"train": ["a"], "val": ["b"]})
    with pytest.raises(InvalidBoxError, match=r"a.xml: object #1 \(dog\): bbox .* outside the 50x40 image"):
        read_voc(root, "error", _counts(), 0, 0.2)
    counts = _counts()
    train, _ = read_voc(root, "clip", counts, 0, 0.2, classes=["dog"])
    assert train.class_names == ["dog"] and train.boxes.xywh.tolist() == [[0, 0, 50, 10]]
    assert counts["train"] == {"clipped": 1, "filtered_by_class": 1}


def test_voc_bad_input(tmp_path, voc_folder):
    root = voc_folder(tmp_path / "voc", {"a": [("dog", 0, 1, 1, 5, 5)], "b": [("dog", 0, 1, 1, 5, 5)]},
                     splits={"train": ["a", "zzz"], "val": ["b"]})
    with pytest.raises(AnnotationError, match=r"train.txt line 2: image id 'zzz' has no annotation file"):
        read_voc(root, "error", _counts(), 0, 0.2)
    (root / "ImageSets/Main/train.txt").write_text("a\n")
    (root / "Annotations/a.xml").write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match=r"a.xml: not valid XML: no element found: line 1"):
        read_voc(root, "error", _counts(), 0, 0.2)
    (root / "Annotations/a.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    with pytest.raises(AnnotationError, match=r"a.xml: object #1 \(dog\): <bndbox> is missing"):
        read_voc(root, "error", _counts(), 0, 0.2)
    with pytest.raises(DataError, match="not a VOC folder"):
        read_voc(tmp_path, "error", _counts(), 0, 0.2)

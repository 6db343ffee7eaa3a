"""Reading a COCO source (pipeline/data/coco.py), including every bad-input case."""

from collections import Counter

import pytest

from pipeline.data.coco import read_coco
from pipeline.data.errors import AnnotationError, DataError, InvalidBoxError, UnsafePathError


def _read(path, images, policy="error", counts=None, **kw):
    return read_coco(path, images, "train", policy, counts if counts is not None else Counter(), **kw)


def test_reads_and_renumbers_categories(raw_coco):
    path, images = raw_coco()
    split = _read(path, images)
    assert split.class_names == ["dog", "cat"]  # sorted by source id (3, 7) -> labels 1, 2
    assert [r.id for r in split.images] == [10, 11, 12, 13]
    first = split.images[0]
    assert first.path == images / "img0.png" and (first.width, first.height) == (40, 30)
    assert [(b.id, b.label, b.bbox, b.iscrowd) for b in first.boxes] == [
        (100, 2, [1, 2, 10, 8], 0), (101, 1, [5, 5, 20, 20], 1)]
    assert first.boxes[1].area == 300.5  # the source area is kept when the box is unchanged


def test_class_subset_filters_and_counts(raw_coco):
    path, images = raw_coco()
    counts = Counter()
    split = _read(path, images, counts=counts, classes=["cat"])
    assert split.class_names == ["cat"]
    assert all(b.label == 1 for r in split.images for b in r.boxes)
    assert counts["filtered_by_class"] == 4
    with pytest.raises(DataError, match=r"data.classes: \['zebra'\] not among the categories"):
        _read(path, images, classes=["zebra"])


def _edit(fn):
    def edit(coco):
        fn(coco)
    return edit


BAD = [
    ("unknown category", lambda c: c["annotations"][0].update(category_id=99),
     AnnotationError, "annotation id 100: unknown category_id 99"),
    ("duplicate image id", lambda c: c["images"][1].update(id=10),
     AnnotationError, "image id 10: duplicate image id"),
    ("duplicate annotation id", lambda c: c["annotations"][1].update(id=100),
     AnnotationError, "annotation id 100: duplicate annotation id"),
    ("annotation of a missing image", lambda c: c["annotations"][2].update(image_id=777),
     AnnotationError, "annotation id 102: points to image id 777, which is not in 'images'"),
    ("path traversal", lambda c: c["images"][0].update(file_name="../../etc/passwd"),
     UnsafePathError, "image id 10: file_name '../../etc/passwd' escapes the image folder"),
    ("absolute path", lambda c: c["images"][0].update(file_name="/etc/passwd"),
     UnsafePathError, "image id 10: file_name '/etc/passwd' escapes"),
    ("missing width", lambda c: c["images"][0].pop("width"),
     AnnotationError, "image id 10: 'width' must be a positive integer"),
    ("degenerate box", lambda c: c["annotations"][0].update(bbox=[1, 2, 0, 8]),
     InvalidBoxError, r"image id 10 \(img0.png\) annotation id 100: bbox \[1, 2, 0, 8\] has width or height <= 0"),
    ("box outside", lambda c: c["annotations"][0].update(bbox=[35, 2, 10, 8]),
     InvalidBoxError, "annotation id 100: bbox .* extends outside the 40x30 image"),
    ("negative coordinates", lambda c: c["annotations"][0].update(bbox=[-3, -2, 10, 8]),
     InvalidBoxError, "annotation id 100: bbox .* extends outside"),
    ("bad iscrowd", lambda c: c["annotations"][0].update(iscrowd=2),
     AnnotationError, "annotation id 100: iscrowd must be 0 or 1"),
    ("no categories", lambda c: c.update(categories=[]),
     AnnotationError, "'categories' is empty"),
]


@pytest.mark.parametrize("case, edit, error, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_file_and_record(raw_coco, case, edit, error, message):
    path, images = raw_coco(edit=edit)
    with pytest.raises(error, match=message) as err:
        _read(path, images)
    assert str(path) in str(err.value)


def test_nan_box_is_an_error_or_counted(raw_coco):
    # JSON has no NaN literal but Python's json writes/reads one: exporters produce it
    path, images = raw_coco(edit=lambda c: c["annotations"][0].update(bbox=[float("nan"), 1, 2, 3]))
    with pytest.raises(InvalidBoxError, match="annotation id 100: .*NaN"):
        _read(path, images)
    counts = Counter()
    split = _read(path, images, policy="clip", counts=counts)
    assert counts == {"dropped_nonfinite": 1}
    assert [b.id for b in split.images[0].boxes] == [101]


def test_clip_policy_clips_and_keeps_box_area_consistent(raw_coco):
    path, images = raw_coco(edit=lambda c: c["annotations"][0].update(bbox=[35, 2, 10, 8]))
    counts = Counter()
    split = _read(path, images, policy="clip", counts=counts)
    box = split.images[0].boxes[0]
    assert box.bbox == [35, 2, 5, 8] and box.area is None  # area recomputed from the clipped box
    assert counts == {"clipped": 1}


def test_malformed_json_names_the_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [}')
    with pytest.raises(AnnotationError, match=r"broken.json: not valid JSON: .* at line 1 column 13"):
        _read(path, tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(AnnotationError, match="broken.json: expected a JSON object"):
        _read(path, tmp_path)
    with pytest.raises(DataError, match="missing.json: annotation file not found"):
        _read(tmp_path / "missing.json", tmp_path)

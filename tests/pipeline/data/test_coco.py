"""Reading a COCO source (pipeline/data/coco.py), including every bad-input case."""

from collections import Counter

import numpy as np
import pytest

from pipeline.data.coco import read_coco
from pipeline.data.errors import AnnotationError, DataError, InvalidBoxError, UnsafePathError


def _read(path, images, policy="error", counts=None, **kw):
    return read_coco(path, images, "train", policy, counts if counts is not None else Counter(), **kw)


def test_reads_and_renumbers_categories(raw_coco):
    path, images = raw_coco()
    split = _read(path, images)
    assert split.class_names == ["dog", "cat"]  # sorted by source id (3, 7) -> labels 1, 2
    assert split.images.ids.tolist() == [10, 11, 12, 13]
    assert split.images.path(0) == images / "img0.png"
    assert (split.images.widths[0], split.images.heights[0]) == (40, 30)
    boxes = split.boxes
    first = boxes.image == 0
    assert list(zip(boxes.ids[first].tolist(), boxes.labels[first].tolist(), boxes.xywh[first].tolist(),
                    boxes.iscrowd[first].tolist())) == [(100, 2, [1, 2, 10, 8], 0), (101, 1, [5, 5, 20, 20], 1)]
    assert boxes.area[first].tolist()[1] == 300.5  # the source area is kept when the box is unchanged


def test_class_subset_filters_and_counts(raw_coco):
    path, images = raw_coco()
    counts = Counter()
    split = _read(path, images, counts=counts, classes=["cat"])
    assert split.class_names == ["cat"]
    assert split.boxes.labels.tolist() == [1] * 4
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
    assert split.boxes.ids[split.boxes.image == 0].tolist() == [101]


def test_clip_policy_clips_and_keeps_box_area_consistent(raw_coco):
    path, images = raw_coco(edit=lambda c: c["annotations"][0].update(bbox=[35, 2, 10, 8]))
    counts = Counter()
    split = _read(path, images, policy="clip", counts=counts)
    assert split.boxes.xywh[0].tolist() == [35, 2, 5, 8]
    assert np.isnan(split.boxes.area[0])  # the clipped box's own area is written, not the source's
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


@pytest.mark.parametrize("order", [("images", "annotations", "categories"), ("annotations", "images", "categories"),
                                   ("categories", "images", "annotations")])
def test_any_key_order_reads_the_same(raw_coco, order):
    # COCO itself ends with "categories"; some exporters put annotations first: the file is streamed,
    # and read a second time for the annotations when they come before what they refer to
    import json

    path, images = raw_coco()
    ref = _read(path, images)
    coco = json.loads(path.read_text())
    path.write_text(json.dumps({"info": {"year": 2017}, **{key: coco[key] for key in order}}, indent=1))
    split = _read(path, images)
    assert split.class_names == ref.class_names and split.images.file_names == ref.images.file_names
    for name in ("ids", "image", "labels", "iscrowd"):
        assert getattr(split.boxes, name).tolist() == getattr(ref.boxes, name).tolist()
    assert split.boxes.xywh.tolist() == ref.boxes.xywh.tolist()


def test_category_errors_come_before_image_errors_whatever_the_order(raw_coco):
    import json

    def edit(c):
        c["images"][0].update(id=11)  # a duplicate image id
        c["categories"] = c["categories"][:1] * 2  # a duplicate category id
    path, images = raw_coco(edit=edit)
    coco = json.loads(path.read_text())
    path.write_text(json.dumps({key: coco[key] for key in ("images", "annotations", "categories")}))
    with pytest.raises(AnnotationError, match="duplicate category id 7"):
        _read(path, images)


TWO_ERRORS = [  # (edit, message of the earlier record): the annotation met first in the file is reported
    (lambda c: (c["annotations"][1].update(bbox=[35, 2, 10, 8]), c["annotations"][3].update(category_id=99)),
     "annotation id 101: bbox .* extends outside"),
    (lambda c: (c["annotations"][1].update(iscrowd=5), c["annotations"][3].update(id=100)),
     "annotation id 101: iscrowd must be 0 or 1"),
    (lambda c: (c["annotations"][2].update(id=100), c["annotations"][3].update(iscrowd=5)),
     "annotation id 100: duplicate annotation id"),
    (lambda c: (c["annotations"][2].update(image_id="x"), c["annotations"][4].update(image_id=777)),
     r"annotation id 102: 'image_id' must be an integer, got 'x'"),
    (lambda c: (c["annotations"][2].update(bbox="1,2,3,4"), c["annotations"][4].update(category_id=99)),
     r"annotation id 102: bbox must be four numbers"),
]


@pytest.mark.parametrize("edit, message", TWO_ERRORS)
def test_the_first_bad_annotation_in_file_order_is_reported(raw_coco, edit, message):
    path, images = raw_coco(edit=edit)
    with pytest.raises(AnnotationError if "outside" not in message else InvalidBoxError, match=message):
        _read(path, images)


def test_a_malformed_box_of_a_filtered_class_is_no_error(raw_coco):
    path, images = raw_coco(edit=lambda c: c["annotations"][1].update(bbox="1,2,3,4"))  # a "dog" box
    counts = Counter()
    split = _read(path, images, counts=counts, classes=["cat"])
    assert counts == {"filtered_by_class": 4} and split.boxes.ids.tolist() == [100, 102, 104, 106]

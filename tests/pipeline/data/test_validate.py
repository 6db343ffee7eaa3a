"""Box policy, image checks and safe paths (pipeline/data/validate.py)."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipeline.data.errors import AnnotationError, ImageError, InvalidBoxError, UnsafePathError
from pipeline.data.records import ImageRecord
from pipeline.data.validate import check_box, check_image, check_images, safe_relative_path

W, H = 100, 80
WHERE = "a.json: image id 3 annotation id 9"


@pytest.mark.parametrize("bbox, problem, clip_result, dropped_as", [
    ([10, 10, 0, 5], "width or height <= 0", None, "dropped_degenerate"),
    ([10, 10, 5, -2], "width or height <= 0", None, "dropped_degenerate"),
    ([float("nan"), 10, 5, 5], "NaN", None, "dropped_nonfinite"),
    ([-5, 10, 20, 10], "outside", [0.0, 10.0, 15.0, 10.0], "dropped_partly_outside"),
    ([90, 70, 20, 20], "outside", [90.0, 70.0, 10.0, 10.0], "dropped_partly_outside"),
    ([200, 10, 5, 5], "outside", None, "dropped_outside"),
    ([-30, -30, 10, 10], "outside", None, "dropped_outside"),
])
def test_invalid_box_follows_the_policy(bbox, problem, clip_result, dropped_as):
    with pytest.raises(InvalidBoxError, match=problem) as err:
        check_box(bbox, W, H, "error", WHERE, Counter())
    assert WHERE in str(err.value) and "data.on_invalid_box" in str(err.value)

    counts = Counter()
    assert check_box(bbox, W, H, "drop", WHERE, counts) is None
    assert counts == {dropped_as: 1}

    counts = Counter()
    assert check_box(bbox, W, H, "clip", WHERE, counts) == clip_result
    expected = "clipped" if clip_result else dropped_as.replace("partly_", "")
    assert counts == {expected: 1}


def test_valid_box_and_rounding_noise_pass():
    counts = Counter()
    assert check_box([0, 0, W, H], W, H, "error", WHERE, counts) == [0, 0, W, H]
    assert check_box([1, 1, W - 1 + 0.001, 5], W, H, "error", WHERE, counts) == [1, 1, W - 1, 5]
    assert counts == {"clamped_rounding": 1}


@pytest.mark.parametrize("bbox", [[1, 2, 3], "1,2,3,4", [1, 2, "3", 4], None])
def test_malformed_bbox_is_always_an_error(bbox):
    with pytest.raises(AnnotationError, match="four numbers"):
        check_box(bbox, W, H, "drop", WHERE, Counter())


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a/../../b.png", "C:\\x.png", "..\\x.png", ""])
def test_unsafe_file_names_are_refused(name):
    with pytest.raises((UnsafePathError, AnnotationError)) as err:
        safe_relative_path(name, "f.json: image id 1")
    assert "f.json: image id 1" in str(err.value)


def test_safe_file_name_keeps_subfolders():
    assert str(safe_relative_path("sub/dir/x.png", "w")) == "sub/dir/x.png"


def _record(path, width=20, height=10):
    return ImageRecord(id=5, file_name=path.name, width=width, height=height, path=path,
                       where="src.json: image id 5")


def test_missing_image(tmp_path):
    with pytest.raises(ImageError, match="src.json: image id 5: image file .*nope.png not found"):
        check_image(_record(tmp_path / "nope.png"))


def test_truncated_and_unreadable_images(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8)).save(good)
    check_image(_record(good))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "junk.jpg"
    garbage.write_bytes(b"not an image at all")
    for path in (truncated, garbage):
        with pytest.raises(ImageError, match=f"image id 5: image file .*{path.name} is unreadable or truncated"):
            check_images([_record(good), _record(path)])


def test_size_mismatch_names_both_sizes(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (20, 10)).save(path)
    with pytest.raises(ImageError, match=r"image id 5: annotated size 30x10 differs from .*x.png \(20x10\)"):
        check_image(_record(path, width=30))

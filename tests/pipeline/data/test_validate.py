"""Box policy, image checks and safe paths (pipeline/data/validate.py)."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipeline.data.errors import AnnotationError, ImageError, InvalidBoxError, UnsafePathError
from pipeline.data.records import BoxColumns, Images, Split
from pipeline.data.validate import check_box, check_images, image_problem, safe_file_name, safe_relative_path

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


def _split(tmp_path, files, sizes=None, name="src.json"):
    """A split of images ``files`` (names under ``tmp_path``), ids 5, 6, ...; sizes default 20x10."""
    sizes = sizes or [(20, 10)] * len(files)
    images = Images(ids=np.arange(5, 5 + len(files)), widths=np.array([w for w, _ in sizes]),
                    heights=np.array([h for _, h in sizes]), file_names=list(files), root=tmp_path,
                    where_prefix=name)
    empty = BoxColumns().build()
    return Split(name="train", class_names=["a"], images=images, boxes=empty, source=name)


def _save(path, size=(20, 10), **kw):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, **kw)
    return path


def test_missing_image(tmp_path):
    with pytest.raises(ImageError, match="src.json: image id 5: image file .*nope.png not found"):
        check_images([_split(tmp_path, ["nope.png"])])
    assert "not found" in image_problem(tmp_path / "nope.png", 20, 10)


@pytest.mark.parametrize("mode", ["header", "decode"])
def test_truncated_and_unreadable_images(tmp_path, mode):
    good = _save(tmp_path / "good.png")
    good_jpg = _save(tmp_path / "good.jpg", quality=90)
    assert image_problem(good, 20, 10, mode) is None and image_problem(good_jpg, 20, 10, mode) is None
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "cut.jpg").write_bytes(good_jpg.read_bytes()[:-40])  # the scan data ends early, no EOI
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    for name in ("cut.png", "cut.jpg", "junk.jpg"):
        with pytest.raises(ImageError, match=f"image id 6: image file .*{name} is unreadable or truncated"):
            check_images([_split(tmp_path, ["good.png", name])], mode=mode)


def test_trailing_bytes_after_the_end_marker_are_fine(tmp_path):
    # some cameras append data after the JPEG's end-of-image marker; decoders ignore it
    jpg = _save(tmp_path / "a.jpg", quality=90)
    jpg.write_bytes(jpg.read_bytes() + np.random.default_rng(1).bytes(200_000))
    assert image_problem(jpg, 20, 10, "header") is None and image_problem(jpg, 20, 10, "decode") is None


def test_size_mismatch_names_both_sizes(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "x.png")
    with pytest.raises(ImageError, match=r"image id 5: annotated size 30x10 differs from .*x.png \(20x10\)"):
        check_images([_split(tmp_path, ["x.png"], sizes=[(30, 10)])])


def test_worker_processes_report_the_first_bad_record_in_order(tmp_path):
    names = [f"{i}.jpg" for i in range(9)]
    for name in names:
        _save(tmp_path / name, quality=80)
    check_images([_split(tmp_path, names)], workers=2, chunk_size=2)  # all fine, through the pool
    (tmp_path / "7.jpg").write_bytes(b"junk")
    (tmp_path / "4.jpg").unlink()
    with pytest.raises(ImageError, match=r"image id 9: image file .*4.jpg not found"):
        check_images([_split(tmp_path, names)], workers=2, chunk_size=2)


@pytest.mark.parametrize("name", ["a.jpg", "sub/dir/x-1 (2).png", "a//b.png", "./a.png", "a/./b.png", "a/", ".hidden/x.jpg",
                                  "é/ü.jpg", "a. ", "x.", "../a.png", "a/../b.png", "/abs.png", "C:x.png", "a\\b.png", " "])
def test_fast_file_name_check_equals_the_pathlib_one(name):
    try:
        expected = str(safe_relative_path(name, "w"))
    except (UnsafePathError, AnnotationError) as err:
        with pytest.raises(type(err)):
            safe_file_name(name, "w")
    else:
        assert safe_file_name(name, "w") == expected


def _variants(tmp_path):
    """JPEGs as cameras and tools write them (progressive, EXIF, grey, CMYK, ICC) and PNGs, 37 x 23."""
    rgb = np.random.default_rng(2).integers(0, 255, (23, 37, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored size is still 37 x 23 (23 x 37 upright)
    exif[0x010F] = "camera"
    out = []
    for name, image, kw in [("plain.jpg", Image.fromarray(rgb), {}),
                            ("progressive.jpg", Image.fromarray(rgb), {"progressive": True}),
                            ("exif.jpg", Image.fromarray(rgb), {"exif": exif, "icc_profile": b"\0" * 3000}),
                            ("grey.jpg", Image.fromarray(rgb[..., 0]), {}),
                            ("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), {}),
                            ("rgb.png", Image.fromarray(rgb), {}),
                            ("palette.png", Image.fromarray(rgb).convert("P"), {})]:
        image.save(tmp_path / name, **kw)
        out.append(tmp_path / name)
    return out


def test_header_mode_reads_the_size_like_pil_and_flags_every_truncation(tmp_path):
    from pipeline.data.validate import _fast_header

    for path in _variants(tmp_path):
        with open(path, "rb") as f:
            fmt, size, complete, orientation = _fast_header(f)
        with Image.open(path) as image:
            assert (size, fmt) == (image.size, image.format.replace("MPO", "JPEG")), path.name
        assert complete and orientation == (6 if path.name == "exif.jpg" else 1)
        assert image_problem(path, 37, 23, exif="ignore") is None  # the stored frame
        if orientation == 1:
            assert "differs" in image_problem(path, 23, 37)
        else:  # the upright frame is read turned whatever the setting; the stored one only with ignore
            assert image_problem(path, 23, 37, exif="ignore") is None and "stored frame" in image_problem(path, 37, 23)
        data = path.read_bytes()
        cut = tmp_path / f"cut-{path.name}"
        for end in list(range(0, len(data), max(1, len(data) // 40))) + [len(data) - 1]:
            cut.write_bytes(data[:end])
            problem = image_problem(cut, 37, 23, exif="ignore")
            assert problem is not None and "unreadable or truncated" in problem, (path.name, end, problem)


@pytest.mark.parametrize("fmt,suffix", [("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_header_mode_catches_truncation_of_every_format(tmp_path, fmt, suffix):
    path = _save(tmp_path / f"a.{suffix}", size=(40, 30), format=fmt)
    assert image_problem(path, 40, 30) is None
    data = path.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[:len(data) * 3 // 4])
    assert "unreadable or truncated" in image_problem(cut, 40, 30), fmt


def test_a_16_bit_png_passes(tmp_path):
    Image.fromarray(np.full((10, 20), 40000, np.uint16)).save(tmp_path / "g.png")
    assert image_problem(tmp_path / "g.png", 20, 10) is None


def _exif_jpeg(path, orientation, size=(60, 40)):
    exif = Image.Exif()
    exif[0x0112] = orientation
    _save(path, size=size, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("fast", [True, False])
def test_exif_orientation_picks_the_frame_and_is_counted(tmp_path, fast):
    from pipeline.data.validate import inspect_image

    names = {o: _exif_jpeg(tmp_path / f"o{o}.jpg", o).name for o in (1, 3, 6, 8)}
    if not fast:  # the same through PIL: a PNG with an eXIf chunk
        for o in (3, 6, 8):
            exif = Image.Exif()
            exif[0x0112] = o
            _save(tmp_path / f"o{o}.png", size=(60, 40), exif=exif.tobytes())
            names[o] = f"o{o}.png"
    path = {o: tmp_path / n for o, n in names.items()}
    # annotated upright (what viewers show): turned under either setting
    assert inspect_image(path[6], 40, 60, exif="ignore") == (None, 6, True)
    assert inspect_image(path[8], 40, 60, exif="apply") == (None, 8, True)
    assert inspect_image(path[3], 60, 40, exif="apply") == (None, 3, True)
    assert inspect_image(path[3], 60, 40, exif="ignore") == (None, 3, False)
    # annotated in the stored frame: fine with ignore; with apply the message says which frame and how to fix
    assert inspect_image(path[6], 60, 40, exif="ignore") == (None, 6, False)
    problem, _, _ = inspect_image(path[6], 60, 40, exif="apply")
    assert "60x40 is the stored frame" in problem and "EXIF orientation 6" in problem
    assert "set data.exif_orientation: ignore" in problem and "fix width/height to 40x60" in problem
    problem, _, _ = inspect_image(path[6], 50, 50)
    assert "fits neither the stored 60x40 nor the upright 40x60" in problem
    split = _split(tmp_path, [names[o] for o in (1, 3, 6, 8)], sizes=[(60, 40), (60, 40), (40, 60), (40, 60)])
    counts = check_images([split], exif="apply")
    assert (counts["exif_tagged"], counts["exif_turned"]) == (3, 3)
    counts = check_images([split], exif="ignore", workers=2, chunk_size=1)
    assert (counts["exif_tagged"], counts["exif_turned"]) == (3, 2)

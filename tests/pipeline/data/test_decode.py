"""The one decode function: every format users bring gives the pixels a reference decode gives."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.decode import (decode_image, decode_or_none, exif_orientation, orientation_applies,
                                  oriented_size)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # (H, W, 3)


def _png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG written by hand (PIL writes 16-bit grey only): ``pixels`` (H, W) or (H, W, C) uint16."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.reshape(h, w * channels).astype(">u2").tobytes()
    stride = w * channels * 2
    raw = b"".join(b"\x00" + rows[y * stride:(y + 1) * stride] for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _decoded(path: Path) -> np.ndarray:
    image = decode_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path, channels: int) -> None:
    pixels = RNG.integers(0, 65536, (24, 32) if channels == 1 else (24, 32, channels), dtype=np.uint16)
    _png16(tmp_path / "a.png", pixels)
    expected = (pixels >> 8).astype(np.uint8)
    expected = np.repeat(expected[..., None], 3, -1) if channels == 1 else expected[..., :3]
    np.testing.assert_array_equal(_decoded(tmp_path / "a.png"), expected)


def test_16_bit_grey_written_by_pil(tmp_path: Path) -> None:
    pixels = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 85)  # 0 .. 65195
    Image.fromarray(pixels).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    got = _decoded(tmp_path / "g.png")
    np.testing.assert_array_equal(got[..., 0], (pixels >> 8).astype(np.uint8))
    assert (got == 255).mean() < 0.01  # PIL's convert("RGB") made this white


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_8_bit_png(tmp_path: Path, mode: str) -> None:
    alpha = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
    grey = RGB[..., 0]
    arrays = {"L": grey, "RGB": RGB, "RGBA": np.dstack([RGB, alpha]), "LA": np.dstack([grey, alpha])}
    Image.fromarray(arrays[mode], mode=mode).save(tmp_path / "a.png")
    expected = np.repeat(grey[..., None], 3, -1) if mode in ("L", "LA") else RGB  # alpha dropped
    np.testing.assert_array_equal(_decoded(tmp_path / "a.png"), expected)


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png(tmp_path: Path, transparency: bool) -> None:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "p.png", **({"transparency": 5} if transparency else {}))
    np.testing.assert_array_equal(_decoded(tmp_path / "p.png"), palette[index])


@pytest.mark.parametrize("fmt,kwargs", [("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                                        ("WEBP", {"lossless": True})])
def test_lossless_formats(tmp_path: Path, fmt: str, kwargs: dict) -> None:
    Image.fromarray(RGB).save(tmp_path / "a.img", format=fmt, **kwargs)
    np.testing.assert_array_equal(_decoded(tmp_path / "a.img"), RGB)


def test_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((24, 32), v, np.uint8), mode="L") for v in (40, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(_decoded(tmp_path / "a.gif"), np.full((24, 32, 3), 40, np.uint8))


def _smooth() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:96]
    return np.dstack([x * 2, y * 3, (x + y)]).astype(np.uint8)  # (64, 96, 3): JPEG keeps it closely


@pytest.mark.parametrize("kwargs", [{}, {"progressive": True}])
def test_jpeg_baseline_and_progressive(tmp_path: Path, kwargs: dict) -> None:
    Image.fromarray(_smooth()).save(tmp_path / "a.jpg", quality=95, **kwargs)
    reference = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    np.testing.assert_array_equal(_decoded(tmp_path / "a.jpg"), reference)
    assert np.abs(reference.astype(int) - _smooth()).mean() < 2


def test_cmyk_jpeg(tmp_path: Path) -> None:
    source = Image.fromarray(_smooth()).convert("CMYK")
    source.save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    got = _decoded(tmp_path / "c.jpg")
    assert np.abs(got.astype(int) - np.asarray(source.convert("RGB"), dtype=int)).mean() < 3


def test_lossy_webp(tmp_path: Path) -> None:
    Image.fromarray(_smooth()).save(tmp_path / "a.webp", quality=95)
    assert np.abs(_decoded(tmp_path / "a.webp").astype(int) - _smooth()).mean() < 4


def _oriented_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=100, subsampling=0)


@pytest.mark.parametrize("orientation,expected", [
    (1, lambda a: a), (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_applied(tmp_path: Path, orientation: int, expected) -> None:
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:20, :30] = 255  # a white top-left quadrant shows where the picture went
    _oriented_jpeg(tmp_path / "o.jpg", pixels, orientation)
    with Image.open(tmp_path / "o.jpg") as image:
        assert exif_orientation(image) == orientation
    want = expected(pixels)
    got = _decoded(tmp_path / "o.jpg")
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).mean() < 3
    ignored = np.asarray(decode_image(tmp_path / "o.jpg", exif_orientation_setting="ignore"))
    assert ignored.shape == pixels.shape


def test_orientation_rule() -> None:
    assert oriented_size((60, 40), 6) == (40, 60) and oriented_size((60, 40), 3) == (60, 40)
    # annotated in the rotated frame: rotated whatever the setting
    assert orientation_applies(6, (60, 40), (40, 60), "ignore")
    # annotated in the stored frame of a 90-degree tag: the setting decides
    assert not orientation_applies(6, (60, 40), (60, 40), "ignore")
    assert orientation_applies(6, (60, 40), (60, 40), "apply")
    # 180 degrees keeps the size: the setting decides; no tag: nothing to do
    assert orientation_applies(3, (60, 40), (60, 40), "apply") and not orientation_applies(3, (60, 40), None, "ignore")
    assert not orientation_applies(1, (60, 40), (40, 60), "apply")


def test_annotated_size_decides_the_frame(tmp_path: Path) -> None:
    _oriented_jpeg(tmp_path / "o.jpg", RGB, 6)  # stored 32x24, shown 24x32
    assert decode_image(tmp_path / "o.jpg", exif_orientation_setting="ignore", annotated_size=(24, 32)).size == (24, 32)
    assert decode_image(tmp_path / "o.jpg", exif_orientation_setting="ignore", annotated_size=(32, 24)).size == (32, 24)


def test_decode_or_none_names_the_error(tmp_path: Path, corrupt_jpeg) -> None:
    corrupt_jpeg(tmp_path / "bad.jpg")
    image, error = decode_or_none(tmp_path / "bad.jpg")
    assert image is None and error.startswith("OSError") and "broken data stream" in error
    image, error = decode_or_none(tmp_path / "missing.jpg")
    assert image is None and "FileNotFoundError" in error and "missing.jpg" in error
    Image.fromarray(RGB).save(tmp_path / "ok.png")
    image, error = decode_or_none((tmp_path / "ok.png").read_bytes())
    assert error is None and image.size == (32, 24)

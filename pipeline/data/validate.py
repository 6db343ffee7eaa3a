"""Checks shared by every source: box validity (with the ``on_invalid_box`` policy),
image files (exist, complete, size as annotated; headers read in parallel processes, or a
full decode with ``data.verify_images: decode``) and image paths that stay inside their folder.

Box outcomes are counted in a :class:`collections.Counter` under these keys, so nothing
is changed or dropped silently: ``clipped``, ``dropped_outside`` (wholly outside, or
degenerate once clipped), ``dropped_degenerate`` (width or height <= 0),
``dropped_nonfinite`` (NaN/inf), ``dropped_partly_outside`` (``drop`` policy) and
``clamped_rounding`` (within ``ROUNDING_TOLERANCE`` px of the border: float noise, clamped
under every policy).
"""

from __future__ import annotations

import math
import os
import re
import struct
import sys
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import Literal

from PIL import Image, UnidentifiedImageError

from pipeline.data.decode import ExifOrientation, exif_orientation, orientation_applies, oriented_size
from pipeline.data.errors import AnnotationError, ImageError, InvalidBoxError, UnsafePathError
from pipeline.data.records import Images, Split

Policy = Literal["error", "clip", "drop"]
VerifyMode = Literal["header", "decode"]
ROUNDING_TOLERANCE = 0.01  # px; coordinates this close outside the border are float noise

_FIX = "fix the annotation or set data.on_invalid_box to clip or drop"


def check_box(bbox: object, width: int, height: int, policy: Policy, where: str,
              counts: Counter) -> list[float] | None:
    """Return ``[x, y, w, h]`` inside a ``width x height`` image, or ``None`` to drop it.

    Args:
        bbox: the annotated ``[x, y, w, h]`` in pixels.
        where: names the file, image and annotation for messages.
        counts: incremented with the outcome (see the module docstring).

    Raises:
        AnnotationError: ``bbox`` is not four numbers (always an error).
        InvalidBoxError: the box is invalid and ``policy`` is ``error``.
    """
    if (not isinstance(bbox, list | tuple) or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)):
        raise AnnotationError(f"{where}: bbox must be four numbers [x, y, width, height], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return _reject(policy, "dropped_nonfinite", f"{where}: bbox {list(bbox)} has NaN or infinite coordinates", counts)
    if w <= 0 or h <= 0:
        return _reject(policy, "dropped_degenerate",
                       f"{where}: bbox {list(bbox)} has width or height <= 0", counts)
    x0, y0, x1, y1 = x, y, x + w, y + h
    tol = ROUNDING_TOLERANCE
    if x0 >= -tol and y0 >= -tol and x1 <= width + tol and y1 <= height + tol:
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            counts["clamped_rounding"] += 1
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
            return [x0, y0, x1 - x0, y1 - y0]
        return [x, y, w, h]
    message = (f"{where}: bbox {list(bbox)} (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) "
               f"extends outside the {width}x{height} image")
    if policy == "error":
        raise InvalidBoxError(f"{message}; {_FIX}")
    if policy == "drop":
        counts["dropped_partly_outside" if _overlaps(x0, y0, x1, y1, width, height) else "dropped_outside"] += 1
        return None
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        counts["dropped_outside"] += 1
        return None
    counts["clipped"] += 1
    return [x0, y0, x1 - x0, y1 - y0]


def _overlaps(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> bool:
    return min(x1, width) > max(x0, 0) and min(y1, height) > max(y0, 0)


def _reject(policy: Policy, key: str, message: str, counts: Counter) -> None:
    if policy == "error":
        raise InvalidBoxError(f"{message}; {_FIX}")
    counts[key] += 1
    return None


_PLAIN_PATH = re.compile(r"(?:[\w\-][\w\-. ]*/)*[\w\-][\w\-. ]*")


def safe_file_name(file_name: object, where: str) -> str:
    """:func:`safe_relative_path` as a string; plain names (``a/b-1.jpg``) skip ``pathlib``."""
    if type(file_name) is str and _PLAIN_PATH.fullmatch(file_name) and not file_name.endswith((" ", ".")):
        return file_name  # no '..', '.', empty or absolute parts, no drive, no backslash: already normal
    return str(safe_relative_path(file_name, where))


def safe_relative_path(file_name: object, where: str) -> PurePosixPath:
    """``file_name`` as a relative path that cannot leave its image folder.

    Raises:
        UnsafePathError: absolute paths, drive letters, ``..`` components, empty names.
    """
    if not isinstance(file_name, str) or not file_name.strip():
        raise AnnotationError(f"{where}: file_name must be a non-empty string, got {file_name!r}")
    posix = PurePosixPath(file_name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(file_name).drive or ".." in posix.parts:
        raise UnsafePathError(f"{where}: file_name {file_name!r} escapes the image folder; "
                              "use a path relative to the image folder without '..'")
    return posix


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_images(splits: Sequence[Split], mode: VerifyMode = "header", workers: int | None = None,
                 chunk_size: int = 256, progress: bool = True, exif: ExifOrientation = "apply") -> Counter:
    """Check every source image of ``splits``: it exists, is an image of the annotated size
    (in the frame the EXIF rule ``exif`` picks, :func:`pipeline.data.decode.orientation_applies`)
    and is complete (see :func:`image_problem`). Returns the EXIF counts: ``exif_tagged`` (images
    with an orientation other than 1) and ``exif_turned`` (of those, read turned).

    The files are checked in ``workers`` processes (default: one per available CPU), in
    chunks of ``chunk_size`` images with a bounded number of chunks in flight, so memory
    stays flat; a small dataset (one chunk) is checked in this process. The first failing
    record in order is reported. Generated images (no ``root``) are skipped.

    Raises:
        ImageError: missing, unreadable or truncated file, or a size mismatch; the message
            names the annotation record, the file and what to fix.
    """
    from tqdm import tqdm

    jobs = [(split.images, start, min(start + chunk_size, len(split.images)))
            for split in splits if split.images.root is not None
            for start in range(0, len(split.images), chunk_size)]
    total = sum(end - start for _, start, end in jobs)
    workers = available_cpus() if workers is None else workers
    counts: Counter = Counter()
    with tqdm(total=total, desc=f"checking images ({mode})", unit="img", file=sys.stderr,
              disable=None if progress else True, dynamic_ncols=True, mininterval=0.5) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for images, start, end in jobs:
                _raise_first(images, start, _check_chunk(_chunk_args(images, start, end), mode, exif), counts)
                bar.update(end - start)
            return counts
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # forkserver: no fork of a process that already runs threads (tqdm's monitor, BLAS)
        context = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context)
        try:
            pending: deque = deque()
            queue = iter(jobs)
            for images, start, end in queue:
                pending.append((images, start, end, pool.submit(_check_chunk, _chunk_args(images, start, end), mode,
                                                                exif)))
                if len(pending) >= 4 * workers:
                    break
            while pending:
                images, start, end, future = pending.popleft()
                _raise_first(images, start, future.result(), counts)
                bar.update(end - start)
                nxt = next(queue, None)
                if nxt is not None:
                    n_images, n_start, n_end = nxt
                    pending.append((n_images, n_start, n_end,
                                    pool.submit(_check_chunk, _chunk_args(n_images, n_start, n_end), mode, exif)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return counts


def _chunk_args(images: Images, start: int, end: int) -> list[tuple[str, int, int]]:
    root = str(images.root)
    return [(os.path.join(root, name), w, h) for name, w, h in zip(
        images.file_names[start:end], images.widths[start:end].tolist(), images.heights[start:end].tolist())]


def _check_chunk(items: list[tuple[str, int, int]], mode: VerifyMode, exif: ExifOrientation = "apply"
                 ) -> tuple[list[tuple[int, str]], Counter]:
    """``(offset in the chunk, problem)`` for each bad image of the chunk, and its EXIF counts (run in a worker)."""
    out, counts = [], Counter()
    for k, (path, width, height) in enumerate(items):
        problem, orientation, turned = inspect_image(path, width, height, mode, exif)
        counts["exif_tagged"] += orientation != 1
        counts["exif_turned"] += turned
        if problem is not None:
            out.append((k, problem))
    return out, counts


def _raise_first(images: Images, start: int, result: tuple[list[tuple[int, str]], Counter], counts: Counter) -> None:
    problems, chunk_counts = result
    counts.update(chunk_counts)
    if problems:
        k, problem = problems[0]
        raise ImageError(f"{images.where(start + k)}: {problem}")


def image_problem(path: str | os.PathLike, width: int, height: int, mode: VerifyMode = "header",
                  exif: ExifOrientation = "apply") -> str | None:
    """What is wrong with the image file at ``path`` annotated as ``width x height``, or ``None``
    (:func:`inspect_image`'s problem)."""
    return inspect_image(path, width, height, mode, exif)[0]


def inspect_image(path: str | os.PathLike, width: int, height: int, mode: VerifyMode = "header",
                  exif: ExifOrientation = "apply") -> tuple[str | None, int, bool]:
    """``(problem or None, EXIF orientation, whether it is read turned)`` of the image file at ``path``
    annotated as ``width x height``.

    ``header`` reads the header (format, size, EXIF orientation) and checks that the file is
    complete without decoding it: a JPEG must have an end-of-image marker (``FF D9``) after its
    scan data, a PNG its ``IEND`` chunk, a WebP as many bytes as its RIFF header says. Plain JPEG
    and PNG headers are parsed here (a few reads, ~30 us per file; the EXIF block, if any, is
    parsed by PIL); other formats go through PIL, and those whose completeness cannot be seen from
    their ends (BMP, GIF, TIFF, ...) are decoded. ``decode`` decodes every pixel with PIL (slow;
    it also catches damaged data inside a complete file, e.g. a JPEG's scan data).
    """
    if mode == "header":
        try:
            with open(path, "rb") as f:
                fast = _fast_header(f)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return f"image file {path} not found; fix file_name or the image folder", 1, False
        except OSError as err:
            return f"image file {path} is unreadable or truncated ({err}); re-export or remove the image", 1, False
        if fast is not None:
            return _problem(path, width, height, *fast, exif=exif)
    try:
        with Image.open(path) as image:
            size, orientation, fmt = image.size, exif_orientation(image), image.format or "image"
            if mode == "decode" or fmt not in _TAIL_CHECKED:
                image.load()
                complete = True
            else:
                complete = _complete(image)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return f"image file {path} not found; fix file_name or the image folder", 1, False
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"image file {path} is unreadable or truncated ({err}); re-export or remove the image", 1, False
    return _problem(path, width, height, fmt, size, complete, orientation, exif=exif)


def _problem(path: str | os.PathLike, width: int, height: int, fmt: str, size: tuple[int, int],
             complete: bool, orientation: int = 1, *, exif: ExifOrientation = "apply") -> tuple[str | None, int, bool]:
    if not complete:
        return (f"image file {path} is unreadable or truncated (the {fmt} data has no end marker: "
                "the file ends early); re-export or remove the image", orientation, False)
    turned = orientation_applies(orientation, size, (width, height), exif)
    expected = oriented_size(size, orientation) if turned else size
    if (width, height) == expected:
        return None, orientation, turned
    if orientation == 1:
        return (f"annotated size {width}x{height} differs from {path} ({size[0]}x{size[1]}); "
                "fix width/height in the annotations", orientation, turned)
    upright = oriented_size(size, orientation)
    if (width, height) == size:  # a 90-degree tag, annotated in the stored frame, read upright (apply)
        return (f"annotated size {width}x{height} is the stored frame of {path}, but its EXIF orientation "
                f"{orientation} shows it turned as {upright[0]}x{upright[1]}, and data.exif_orientation is "
                "apply: if the boxes were drawn on the stored pixels set data.exif_orientation: ignore; "
                f"if they were drawn on the upright picture, fix width/height to {upright[0]}x{upright[1]}",
                orientation, turned)
    return (f"annotated size {width}x{height} fits neither the stored {size[0]}x{size[1]} nor the upright "
            f"{upright[0]}x{upright[1]} (EXIF orientation {orientation}) of {path}; fix width/height in the "
            "annotations", orientation, turned)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7


def _fast_header(f) -> tuple[str, tuple[int, int], bool, int] | None:
    """``(format, (w, h), complete, EXIF orientation)`` of a plain JPEG or PNG file, or None (let PIL look)."""
    head = f.read(1 << 16)
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 33 or head[12:16] != b"IHDR" or b"eXIf" in head:
            return None  # PIL reads a PNG's EXIF chunk
        w, h = struct.unpack(">II", head[16:24])
        return "PNG", (w, h), _marker_after(f, _END_MARKERS["PNG"], 33), 1
    if not head.startswith(b"\xff\xd8"):
        return None
    pos, size, orientation = 2, None, 1
    while True:  # walk the marker segments up to the start of scan (SOS)
        if pos + 4 > len(head):
            more = f.read(max(1 << 16, pos + 4 - len(head)))
            if not more:
                return None  # ends inside the header: PIL says what is wrong
            head += more
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        pos += 2
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker in (0xD8, 0xD9):
            return None
        length = head[pos] << 8 | head[pos + 1]
        if marker == 0xE1:  # APP1: EXIF (parsed by PIL) or XMP
            if pos + length > len(head):
                head += f.read(pos + length - len(head))
            if head[pos + 2:pos + 8] == b"Exif\x00\x00":
                orientation = _orientation(head[pos + 2:pos + length])
        if marker in _JPEG_SOF:
            if pos + 7 > len(head):
                head += f.read(pos + 7 - len(head))
                if pos + 7 > len(head):
                    return None
            h, w = struct.unpack(">HH", head[pos + 3:pos + 7])
            size = (w, h)
        if marker == 0xDA:  # SOS: the entropy-coded data follows
            if size is None:
                return None
            return "JPEG", size, _marker_after(f, _END_MARKERS["JPEG"], pos + length), orientation
        pos += length


def _orientation(exif_block: bytes) -> int:
    """The orientation tag of a JPEG's APP1 EXIF block (1 if absent or unreadable)."""
    exif = Image.Exif()
    try:
        exif.load(exif_block)
    except (OSError, SyntaxError, ValueError, struct.error):
        return 1
    value = exif.get(0x0112, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _marker_after(f, marker: bytes, start: int) -> bool:
    """Whether ``marker`` occurs after byte ``start``, searching backwards from the end (usually
    found in the last kilobyte: files may carry trailing data after the end marker)."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    block = 1024
    while end > start:
        lo = max(start, end - block)
        f.seek(lo)
        if marker in f.read(end - lo + len(marker) - 1):
            return True
        end, block = lo, 1 << 16
    return False


_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL_CHECKED = frozenset({*_END_MARKERS, "WEBP"})  # formats whose completeness the header mode sees from the tail


def _complete(image: Image.Image) -> bool:
    """Whether an image PIL opened looks complete (see :func:`image_problem`), from its tail."""
    fp = image.fp
    if fp is None:  # pragma: no cover - PIL closed it
        return True
    header_end = fp.tell()  # PIL stops reading after the header (JPEG: after the start-of-scan segment)
    if image.format == "WEBP":
        fp.seek(0, os.SEEK_END)
        size = fp.tell()
        fp.seek(4)
        riff = fp.read(4)
        return len(riff) == 4 and size >= int.from_bytes(riff, "little") + 8
    marker = _END_MARKERS.get(image.format or "")
    return marker is None or _marker_after(fp, marker, header_end)

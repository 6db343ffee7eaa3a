"""Stream the top-level object of a big JSON file: one array element at a time.

A COCO annotation file is one object whose ``images`` and ``annotations`` arrays hold
hundreds of thousands of small objects. ``json.load`` builds all of them at once (about
5x the file size in Python objects); :func:`top_level` reads the file in chunks and hands
out each top-level key with a :class:`Value` whose array elements are decoded one by one
(``json.JSONDecoder.raw_decode``, the C scanner), so memory stays at one chunk plus what
the caller keeps.

Syntax errors are :class:`JsonError` with the 1-based line and column, like ``json``'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 23          # characters read at a time
MAX_ELEMENT = 1 << 26    # an element that does not parse within this many characters is a syntax error
_WS = re.compile(r"[ \t\n\r]*")
_AFTER_BARE = frozenset(" \t\n\r,]}")
_SEP = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class JsonError(ValueError):
    """Invalid JSON; ``msg``, ``lineno`` and ``colno`` as in :class:`json.JSONDecodeError`."""

    def __init__(self, msg: str, lineno: int, colno: int) -> None:
        super().__init__(f"{msg}: line {lineno} column {colno}")
        self.msg, self.lineno, self.colno = msg, lineno, colno


class _Reader:
    """A moving window over a text file: ``buf[pos]`` is the next character."""

    def __init__(self, f: IO[str], progress: Callable[[int], object] | None = None) -> None:
        self.f, self.progress = f, progress
        self.buf, self.pos = "", 0
        self.eof = False
        self.lines_before = 0  # newlines in the text dropped from the window
        self.line_start = 0    # index (negative: before the window) where the current line starts

    def fill(self) -> bool:
        """Read one more chunk (dropping what was consumed); False at the end of the file."""
        chunk = "" if self.eof else self.f.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.progress is not None:
            self.progress(len(chunk))
        if self.pos > 0:
            newlines = self.buf.count("\n", 0, self.pos)
            self.lines_before += newlines
            self.line_start = (self.buf.rfind("\n", 0, self.pos) + 1 if newlines else self.line_start) - self.pos
            self.buf, self.pos = self.buf[self.pos:], 0
        self.buf += chunk
        return True

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end), without consuming it."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.fill():
                return self.buf[self.pos:self.pos + 1]

    def expect(self, chars: str, what: str) -> str:
        ch = self.peek()
        if not ch or ch not in chars:
            self.error(f"Expecting {what}", self.pos)
        self.pos += 1
        return ch

    def value(self) -> Any:
        """Decode the JSON value at the cursor (reading more of the file while it is incomplete)."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if len(self.buf) - self.pos > MAX_ELEMENT or not self.fill():
                    self.error(err.msg, err.pos)
                continue
            if self.buf[self.pos] not in "{[\"" and (end == len(self.buf) or self.buf[end] not in _AFTER_BARE):
                # a number cut at the end of the window ("3." or "3.2e") may continue in the next chunk
                if self.fill():
                    continue
            self.pos = end
            return value

    def error(self, msg: str, pos: int) -> None:
        text = self.buf[:pos]
        newlines = text.count("\n")
        line_start = text.rfind("\n") + 1 if newlines else self.line_start
        raise JsonError(msg, self.lines_before + newlines + 1, pos - line_start + 1)


class Value:
    """A top-level value of the streamed object; use one of its methods once (or none: skipped)."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self.used = False
        self._items: Iterator[Any] | None = None

    def is_array(self) -> bool:
        return self._reader.peek() == "["

    def value(self) -> Any:
        """The whole value (for small ones such as ``categories``)."""
        self.used = True
        return self._reader.value()

    def items(self) -> Iterator[Any]:
        """The elements of an array value, decoded one at a time (check :meth:`is_array` first).
        Elements the caller does not take are skipped before the next key."""
        self.used = True
        self._items = self._elements()
        return self._items

    def _elements(self) -> Iterator[Any]:
        r = self._reader
        r.expect("[", "'['")
        if r.peek() == "]":
            r.pos += 1
            return
        decode, sep = _DECODER.raw_decode, _SEP.match
        while True:
            # fast path: a whole element and its separator inside the window
            try:
                value, end = decode(r.buf, r.pos)
                m = sep(r.buf, end)
            except json.JSONDecodeError:
                m = None
            if m is not None and m.end() < len(r.buf):
                r.pos = m.end()
                yield value
                if m.group(1) == "]":
                    return
                continue
            yield r.value()  # slow path: near the end of the window, or an error to report
            if r.expect(",]", "',' delimiter") == "]":
                return
            r.peek()  # raw_decode wants the cursor on the value, not on whitespace

    def skip(self) -> None:
        if self._items is not None:
            for _ in self._items:  # the rest of a partly read array
                pass
            return
        if self.used:
            return
        if self.is_array():
            for _ in self.items():
                pass
        else:
            self.value()


def first_char(path: str | Path) -> str:
    """The first non-whitespace character of a text file ("" if empty)."""
    with open(path, encoding="utf-8") as f:
        return _Reader(f).peek()


def top_level(path: str | Path, progress: Callable[[int], object] | None = None) -> Iterator[tuple[str, Value]]:
    """``(key, value)`` for each key of the file's top-level object, in file order.

    The file must start with ``{`` (check with :func:`first_char`). A value the caller leaves
    unused is skipped (array elements one at a time) before the next key is read.
    ``progress(n)`` is called with the number of characters of each chunk read.

    Raises:
        JsonError: invalid JSON, with the line and column.
        UnicodeDecodeError: the file is not UTF-8.
    """
    with open(path, encoding="utf-8") as f:
        r = _Reader(f, progress)
        r.expect("{", "'{'")
        if r.peek() == "}":
            r.pos += 1
        else:
            while True:
                if r.peek() != '"':
                    r.error("Expecting property name enclosed in double quotes", r.pos)
                key = r.value()
                r.expect(":", "':' delimiter")
                value = Value(r)
                yield key, value
                value.skip()
                if r.expect(",}", "',' delimiter") == "}":
                    break
        if r.peek():
            r.error("Extra data", r.pos)

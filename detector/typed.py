"""Build a dataclass from a plain dict (e.g. parsed YAML), checking keys and types.

Supported annotations: nested dataclasses, ``X | Y`` (``Optional``), ``list[X]``,
``dict`` (any mapping, copied; its keys and values are not checked), ``Any``,
``Literal[...]``, ``bool``, ``int``, ``float`` (ints are accepted and converted) and
``str``. A bool is not accepted as a number. Every error names the dotted key, e.g.
``model.anchors.scales[1]: expected float, got 'x'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

__all__ = ["describe", "field_types", "from_dict", "join_key"]

T = TypeVar("T")

_SCALARS: dict[type, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def from_dict(
    cls: type[T],
    data: Any,
    *,
    key: str = "",
    error: type[ValueError] = ValueError,
    relative_errors: bool = True,
    fixed: Mapping[str, Any] | None = None,
) -> T:
    """Build the dataclass ``cls`` from the mapping ``data``.

    Args:
        key: dotted key of ``data``; the keys named in errors start with it.
        error: raised for a non-mapping section, an unknown key or a badly typed value.
        relative_errors: ``ValueError`` s raised by a dataclass itself (its
            ``__post_init__``) name the field relative to its section and are re-raised
            as ``error`` with the section's key in front. False: they already name the
            full key and propagate unchanged.
        fixed: keyword arguments passed to ``cls`` as they are (not keys of ``data``).
    """
    try:
        return _Builder(error, relative_errors).build(cls, data, key, dict(fixed or {}))
    except _Mismatch as err:
        raise error(str(err)) from None


def field_types(cls: type) -> dict[str, Any]:
    """The keys a mapping for ``cls`` may have, with their resolved annotations.

    Fields with ``init=False`` or ``metadata={"internal": True}`` are not keys.
    """
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if f.init and not f.metadata.get("internal")
    }


def join_key(prefix: str, name: str) -> str:
    """``prefix.name``, or ``name`` when there is no prefix."""
    return f"{prefix}.{name}" if prefix else name


def describe(tp: Any) -> str:
    """What an annotation accepts, in words: ``list of float``, ``str or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is list:
        return f"list of {describe(args[0])}" if args else "list"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "anything"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    """A key or value that does not fit the schema; ``key`` is where."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key or '(top level)'}: {problem}")
        self.key = key

    @classmethod
    def expected(cls, key: str, tp: Any, value: Any) -> _Mismatch:
        return cls(key, f"expected {describe(tp)}, got {value!r}")


@dataclass(frozen=True)
class _Builder:
    error: type[ValueError]
    relative_errors: bool

    def build(self, cls: type[T], data: Any, key: str, fixed: dict[str, Any]) -> T:
        if not isinstance(data, Mapping):
            raise _Mismatch.expected(key, cls, data)
        types_ = {name: tp for name, tp in field_types(cls).items() if name not in fixed}
        unknown = sorted(set(data) - set(types_))
        if unknown:
            allowed = ", ".join(sorted(types_))
            raise _Mismatch(join_key(key, str(unknown[0])), f"unknown key (allowed: {allowed})")
        kwargs = {name: self.convert(value, types_[name], join_key(key, name)) for name, value in data.items()}
        try:
            return cls(**kwargs, **fixed)
        except ValueError as err:
            if not self.relative_errors:
                raise
            raise self.error(join_key(key, str(err))) from None

    def convert(self, value: Any, tp: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        if tp is Any:
            return value
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key, {})  # type: ignore[arg-type]
        if origin in (Union, types.UnionType):
            return self.union(value, tp, key)
        if origin is list:
            if not isinstance(value, list | tuple):
                raise _Mismatch.expected(key, tp, value)
            (item,) = typing.get_args(tp) or (Any,)
            return [self.convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if tp is dict or origin is dict:
            if not isinstance(value, Mapping):
                raise _Mismatch.expected(key, tp, value)
            return dict(value)
        if origin is Literal:
            if not any(type(value) is type(c) and value == c for c in typing.get_args(tp)):
                raise _Mismatch.expected(key, tp, value)
            return value
        return _scalar(value, tp, key)

    def union(self, value: Any, tp: Any, key: str) -> Any:
        """The first alternative that fits. When exactly one alternative failed deeper
        inside the value (an element, a nested key), its error is the one raised."""
        deeper = []
        for arg in typing.get_args(tp):
            try:
                return self.convert(value, arg, key)
            except _Mismatch as err:
                if err.key != key:
                    deeper.append(err)
        if len(deeper) == 1:
            raise deeper[0]
        raise _Mismatch.expected(key, tp, value)


def _scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is type(None):
        if value is None:
            return None
    elif tp in _SCALARS:
        if isinstance(value, _SCALARS[tp]) and (tp is bool or not isinstance(value, bool)):
            return float(value) if tp is float else value
    else:
        raise TypeError(f"{key}: unsupported annotation {tp!r}")
    raise _Mismatch.expected(key, tp, value)

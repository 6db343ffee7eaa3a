"""detector.typed: dataclasses from plain dicts, with the dotted key in every error."""

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from detector.typed import describe, field_types, from_dict


class MyError(ValueError):
    pass


@dataclass
class Inner:
    x: float = 1.0
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError(f"x: must be >= 0, got {self.x}")


@dataclass
class Outer:
    mode: Literal["fast", "slow"] = "fast"
    count: int = 1
    flag: bool = False
    name: str | None = None
    sizes: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    anything: Any = None
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    origin: str | None = field(default=None, metadata={"internal": True})


def test_builds_nested_and_converts_ints_to_floats():
    out = from_dict(Outer, {"mode": "slow", "inner": {"x": 2, "tags": ["a"]}, "items": [{}, {"x": 3}],
                            "extra": {"k": [1]}, "anything": {"free": 1}, "sizes": None})
    assert out == Outer(mode="slow", inner=Inner(2.0, ["a"]), items=[Inner(), Inner(3.0)],
                        extra={"k": [1]}, anything={"free": 1})
    assert isinstance(out.inner.x, float) and isinstance(out.items[1].x, float)
    assert from_dict(Outer, {}) == Outer()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mode": "medium"}, "mode: expected one of 'fast', 'slow', got 'medium'"),
        ({"name": 3}, "name: expected str or null, got 3"),
        ({"count": True}, "count: expected int, got True"),
        ({"count": 1.5}, "count: expected int, got 1.5"),
        ({"flag": 1}, "flag: expected bool, got 1"),
        ({"inner": {"x": False}}, "inner.x: expected float, got False"),
        ({"inner": {"x": "big"}}, "inner.x: expected float, got 'big'"),
        ({"inner": 3}, "inner: expected a mapping, got 3"),
        ({"extra": [1]}, r"extra: expected a mapping, got \[1\]"),
        ({"items": [{}, {"tags": ["a", 5]}]}, r"items\[1\].tags\[1\]: expected str, got 5"),
        ({"items": [{}, {"y": 1}]}, r"items\[1\].y: unknown key \(allowed: tags, x\)"),
        ({"sizes": [1, "two"]}, r"sizes\[1\]: expected int, got 'two'"),  # the one fitting alternative
        ({"sizes": "two"}, "sizes: expected list of int or null, got 'two'"),
        ({"colour": "red"}, r"colour: unknown key \(allowed: anything, count, .*\)"),
        ({"origin": "x"}, "origin: unknown key"),  # internal fields are not keys
    ],
)
def test_errors_name_the_dotted_key(data, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        from_dict(Outer, data)


def test_key_prefix_and_error_class():
    with pytest.raises(MyError, match=r"^cfg\.inner\.x: expected float"):
        from_dict(Outer, {"inner": {"x": "big"}}, key="cfg", error=MyError)
    with pytest.raises(MyError, match=r"^\(top level\): expected a mapping, got 3"):
        from_dict(Outer, 3, error=MyError)


def test_post_init_errors_relative_or_unchanged():
    with pytest.raises(MyError, match=r"^cfg\.inner\.x: must be >= 0, got -1"):
        from_dict(Outer, {"inner": {"x": -1}}, key="cfg", error=MyError)
    with pytest.raises(ValueError, match=r"^x: must be >= 0") as err:
        from_dict(Outer, {"inner": {"x": -1}}, key="cfg", error=MyError, relative_errors=False)
    assert type(err.value) is ValueError


def test_fixed_arguments_are_not_keys():
    assert from_dict(Outer, {}, fixed={"count": 7}).count == 7
    with pytest.raises(ValueError, match="count: unknown key"):
        from_dict(Outer, {"count": 2}, fixed={"count": 7})


def test_field_types_and_describe():
    assert set(field_types(Outer)) == set(Outer.__dataclass_fields__) - {"origin"}
    assert describe(list[float] | list[list[float]]) == "list of float or list of list of float"
    assert describe(Literal["a", "b"] | None) == "one of 'a', 'b' or null"

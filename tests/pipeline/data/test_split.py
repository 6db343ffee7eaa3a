"""Seeded train/val split (pipeline/data/split.py)."""

import pytest

from pipeline.data.errors import EmptySplitError
from pipeline.data.split import seeded_split


def test_split_is_seeded_disjoint_and_ordered():
    items = list(range(20))
    train, val = seeded_split(items, 0, 0.25, "x")
    assert len(val) == 5 and sorted(train + val) == items and train == sorted(train)
    assert seeded_split(items, 0, 0.25, "x") == (train, val)
    assert seeded_split(items, 1, 0.25, "x") != (train, val)


def test_tiny_sets_keep_both_sides_non_empty():
    assert [len(s) for s in seeded_split([1, 2], 0, 0.01, "x")] == [1, 1]
    assert [len(s) for s in seeded_split([1, 2, 3], 0, 0.99, "x")] == [1, 2]
    with pytest.raises(EmptySplitError, match="src.json: 1 image"):
        seeded_split([1], 0, 0.2, "src.json")

"""pipeline.environ: variables set or changed in a block are as before afterwards."""

from __future__ import annotations

import os

import pytest

from pipeline.environ import env_restored


def test_set_values_and_names_changed_in_the_block_come_back(monkeypatch):
    monkeypatch.setenv("DETPIPE_T_SET", "old")
    monkeypatch.delenv("DETPIPE_T_UNSET", raising=False)
    monkeypatch.setenv("DETPIPE_T_WATCHED", "kept")
    with env_restored("DETPIPE_T_WATCHED", DETPIPE_T_SET="new", DETPIPE_T_UNSET="x"):
        assert os.environ["DETPIPE_T_SET"] == "new" and os.environ["DETPIPE_T_UNSET"] == "x"
        os.environ["DETPIPE_T_WATCHED"] = "changed"
    assert os.environ["DETPIPE_T_SET"] == "old" and os.environ["DETPIPE_T_WATCHED"] == "kept"
    assert "DETPIPE_T_UNSET" not in os.environ


def test_restored_when_the_block_raises_and_a_variable_it_made_is_removed(monkeypatch):
    monkeypatch.delenv("DETPIPE_T_MADE", raising=False)
    with pytest.raises(RuntimeError), env_restored("DETPIPE_T_MADE"):
        os.environ["DETPIPE_T_MADE"] = "by the block"
        raise RuntimeError("boom")
    assert "DETPIPE_T_MADE" not in os.environ

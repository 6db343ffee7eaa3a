"""Streaming the top level of a JSON file (pipeline/data/jsonstream.py), against the json module."""

import json

import pytest

from pipeline.data import jsonstream

DOC = {"info": {"a": [1, 2.5, 'x"y]'], "b": None}, "empty": [],
       "images": [{"id": i, "file_name": "é" * (i % 3) + "]", "w": 1e3 * i, "t": True} for i in range(40)],
       "numbers": [123456789, -2, 3.25e-3, 4], "categories": [{"id": 1, "name": "a"}]}


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_streamed_equals_json_load_for_any_chunk_size(tmp_path, monkeypatch, chunk, indent):
    monkeypatch.setattr(jsonstream, "CHUNK", chunk)  # elements and numbers cut at every position
    path = tmp_path / "a.json"
    path.write_text(json.dumps(DOC, indent=indent), encoding="utf-8")
    streamed = {key: list(value.items()) if value.is_array() else value.value()
                for key, value in jsonstream.top_level(path)}
    assert streamed == DOC
    assert [key for key, _ in jsonstream.top_level(path)] == list(DOC)  # unused values are skipped
    partly = []
    for key, value in jsonstream.top_level(path):  # a partly read array is skipped too
        if key == "images":
            partly = [item["id"] for _, item in zip(range(3), value.items())]
    assert partly == [0, 1, 2]


@pytest.mark.parametrize("text", ['{"images": [}', '{"images": [1,\n 2,\n  x]}', '{"a": 1} x', '{"a" 1}',
                                  '{"images": [1 2]}', '{"a": [1, 2', '{"a": "open', '{\n\n"a": tru}', '{"a": 1,}'])
@pytest.mark.parametrize("chunk", [2, 1 << 20])
def test_errors_name_the_same_line_and_column_as_json(tmp_path, monkeypatch, text, chunk):
    monkeypatch.setattr(jsonstream, "CHUNK", chunk)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as ref:
        json.loads(text)
    with pytest.raises(jsonstream.JsonError) as err:
        for _, value in jsonstream.top_level(path):
            if value.is_array():
                list(value.items())
    assert (err.value.lineno, err.value.colno) == (ref.value.lineno, ref.value.colno)

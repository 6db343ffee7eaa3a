"""The shape of the code that issue-sized changes must keep: functions a reader can hold in their head."""

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
MAX_FUNCTION_LINES = 80


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("path", sorted(PIPELINE.rglob("*.py")), ids=lambda p: p.relative_to(PIPELINE).as_posix())
def test_no_function_over_80_lines(path):
    long = [(name, lines) for name, lines in _functions(path) if lines > MAX_FUNCTION_LINES]
    assert not long, f"{path}: split {', '.join(f'{n} ({k} lines)' for n, k in long)} into parts"


def test_the_ray_worker_function_only_builds_parts_and_registers_hooks():
    lines = dict(_functions(PIPELINE / "training" / "worker.py"))["train_loop_per_worker"]
    assert lines < 50, f"train_loop_per_worker has {lines} lines"

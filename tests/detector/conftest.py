"""Shared fixtures and helpers for the detector tests."""

import pytest
import torch


def random_boxes(
    n: int, size: float = 100.0, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(n, 4)`` valid xyxy boxes inside ``[0, size]``."""
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * size * 0.8
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * size * 0.4 + 1.0
    return torch.cat([xy, xy + wh], dim=-1)


@pytest.fixture
def make_boxes():
    """The ``random_boxes`` helper (test modules are not importable packages)."""
    return random_boxes


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _few_threads():
    # the CI box has 2 cores shared with other suites
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

"""Shared fixtures. Helper functions and override lists are in tests/helpers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread for a module: on a 2-core machine shared with other jobs, two
    contending threads made small convolutions ~30x slower (measured: R18 at 96x128, 18 ms
    vs 0.6 s), and one thread keeps tiny runs' float results identical between runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

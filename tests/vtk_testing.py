"""Helpers shared by the test modules (importable as ``vtk_testing``: ``tests/`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from torch import nn

__all__ = ["perturb_", "one_thread"]


def perturb_(module: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """Add ``scale * N(0, 1)`` (seeded) to every parameter, in place, and return the module in eval mode.

    Moves every tensor off its init (norm affines are 1/0 there), so a parity test fails if a converter swaps or
    drops one.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small ops on the shared 2-core machine run fastest single-threaded; restores the thread count after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

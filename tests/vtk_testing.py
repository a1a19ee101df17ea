"""Helpers shared by the test modules (importable as ``vtk_testing``: ``tests/`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, List, Optional, Sequence

import pytest
import torch
from torch import nn

__all__ = ["tiny_video_run", "perturb_", "randomize_", "one_thread", "registered",
           "foreign_registry_entries", "autograd_nodes"]

# Packages whose modules may register models and converters; an entry defined anywhere else came from a test.
PROJECT_PACKAGES = ("backbones", "medvit", "videovit", "engine", "cli")


def autograd_nodes(t: torch.Tensor) -> List[str]:
    """Class names of every autograd node behind ``t`` (which backward functions a forward recorded)."""
    names, todo, seen = [], [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        names.append(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


def perturb_(module: nn.Module, scale: float = 0.05, seed: Optional[int] = 1) -> nn.Module:
    """Add ``scale * N(0, 1)`` to every parameter, in place, and return the module in eval mode.

    Moves every tensor off its init (norm affines are 1/0 there), so a parity test fails if a converter swaps or
    drops one.

    Args:
        seed: Seed of a private generator; ``None`` draws from (and advances) torch's global generator instead.
    """
    g = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def randomize_(module: nn.Module, std: float) -> nn.Module:
    """Replace every parameter by ``N(0, std)`` draws from torch's global generator, in place (mode unchanged).

    For references that zero-init tables and biases (HF, timm at std 0.02): every tensor gets non-trivial values.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small ops on the shared 2-core machine run fastest single-threaded; restores the thread count after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@contextlib.contextmanager
def registered(registry, *entry_points: Callable[..., nn.Module], **options) -> Iterator[None]:
    """Register throw-away entry points in ``registry`` for the block; they are unregistered even when it fails.

    Args:
        registry: A :class:`backbones._registry.Registry` (``medvit.registry``, ...).
        *entry_points: Functions registered under their ``__name__``.
        **options: ``tiny``/``meta``/``aliases`` for every entry, as ``register_model`` takes them.
    """
    names: List[str] = []
    try:
        for fn in entry_points:
            registry.register_model(fn, **options)
            names.append(fn.__name__)
        yield
    finally:
        for name in names:
            registry.unregister(name)


def _foreign(fn: object) -> bool:
    module = getattr(fn, "__module__", None) or ""
    return module.split(".")[0] not in PROJECT_PACKAGES


def foreign_registry_entries() -> List[str]:
    """Models registered from outside the project packages (i.e. by tests) that are still there.

    Only registries already imported are inspected, so the check imports nothing.
    """
    found = []
    for pkg in ("backbones", "medvit", "videovit"):
        registry = getattr(sys.modules.get(pkg), "registry", None)
        if registry is not None:
            found += [f"{pkg} model {name!r} (from {registry.entrypoint(name).__module__})"
                      for name in registry.list_models() if _foreign(registry.entrypoint(name))]
    return found


# The smallest TimeSformer the video CLI trains: 4 frames of 32x32, patch 8, one block of width 16.
TINY_TIMESFORMER = ["--num-frames", "4", "--img-size", "32", "--patch-size", "8", "--model-arg", "embed_dim=16",
                    "--model-arg", "depth=1", "--model-arg", "num_heads=2"]


def tiny_video_run(root, *, videos_per_class: int, seed: int, steps: int, batch_size: int,
                   extra: Sequence[str] = ()):
    """``(run, data)``: a 3-class synthetic Kinetics copy under ``root/k400`` (8 frames, 32 px) and a tiny
    TimeSformer trained on it for ``steps`` steps into ``root/run`` through ``vtk video train``."""
    from pathlib import Path

    from cli.main import main

    root = Path(root)
    data, run = root / "k400", root / "run"
    assert main(["data", "synth", "kinetics400", "--out", str(data), "--classes", "3", "--videos-per-class",
                 str(videos_per_class), "--frames", "8", "--size", "32", "--seed", str(seed)]) == 0
    assert main(["video", "train", "--model", "timesformer", "--data", "kinetics400", "--data-dir", str(data),
                 "--out", str(run), "--max-steps", str(steps), "--batch-size", str(batch_size), "--val-every",
                 str(steps), "--num-workers", "0", "--device", "cpu", "--quiet", *extra, *TINY_TIMESFORMER]) == 0
    return run, data

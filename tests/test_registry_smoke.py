"""Registry-wide smoke test: every model of ``backbones``, ``medvit`` and ``videovit`` at its ``tiny`` overrides.

For each registered name: build with ``registry.tiny_overrides(name)``, run a forward pass on a random input of
``model.pretrained_cfg['input_size']`` (batch 2), check the output shape and that it is finite, run backward and
check every trainable parameter that took part gets a finite gradient, and check that gradient checkpointing
gives the same output and gradients. Backbones also run ``forward_intermediates``.

Output-shape contract: a 2D output is ``(B, num_classes)`` (``(B, num_features)`` when ``num_classes == 0``); a
dense output is ``(B, num_classes, *input spatial)``.
"""

from __future__ import annotations

import importlib
from typing import List, Tuple

import pytest
import torch

__all__: List[str] = []


def _registries() -> List[Tuple[str, object]]:
    return [(pkg, importlib.import_module(pkg).registry) for pkg in ("backbones", "medvit", "videovit")]


# Models the package itself registers (test suites may register stand-ins such as tests/medvit's tiny_seg3d).
_CASES = [pytest.param(pkg, reg, name, id=f"{pkg}:{name}") for pkg, reg in _registries() for name in reg.list_models()
          if reg.entrypoint(name).__module__.startswith(pkg + ".")]


def _build(reg, name: str) -> Tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = reg.create_model(name, **reg.tiny_overrides(name))
    size = tuple(model.pretrained_cfg["input_size"])
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
    return model, x


def _expected_shape(model: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> Tuple[int, ...]:
    num_classes = getattr(model, "num_classes", None)
    if out.ndim == 2:
        return (x.shape[0], num_classes or getattr(model, "num_features", out.shape[1]))
    # Dense prediction: (B, num_classes, *spatial) for images (B, C, *S); video is (B, C, T, H, W) -> 2D logits.
    return (x.shape[0], num_classes if num_classes is not None else out.shape[1], *x.shape[2:])


def _grads(model: torch.nn.Module) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pkg,reg,name", _CASES)
def test_smoke(pkg: str, reg, name: str) -> None:
    model, x = _build(reg, name)
    model.train()
    torch.manual_seed(2)  # same stochastic-depth/dropout draws in both passes
    out = model(x)
    assert isinstance(out, torch.Tensor), f"{name}: forward must return a tensor, got {type(out)}"
    assert tuple(out.shape) == _expected_shape(model, x, out), f"{name}: output shape {tuple(out.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite output"
    out.float().square().mean().backward()
    grads = _grads(model)
    assert grads, f"{name}: no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads.values()), f"{name}: non-finite gradient"
    if not hasattr(model, "set_grad_checkpointing"):
        pytest.fail(f"{name}: no set_grad_checkpointing")
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    torch.manual_seed(2)
    out_ckpt = model(x)
    out_ckpt.float().square().mean().backward()
    torch.testing.assert_close(out_ckpt, out, rtol=1e-5, atol=1e-5)
    ckpt_grads = _grads(model)
    assert ckpt_grads.keys() == grads.keys(), f"{name}: checkpointing changes which parameters get gradients"
    for n, g in grads.items():
        torch.testing.assert_close(ckpt_grads[n], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {n}: {m}")


@pytest.mark.parametrize("pkg,reg,name", [c for c in _CASES if c.values[0] == "backbones"])
def test_backbone_intermediates(pkg: str, reg, name: str) -> None:
    model, x = _build(reg, name)
    model.eval()
    with torch.no_grad():
        feats = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert isinstance(feats, list) and len(feats) >= 1, f"{name}: forward_intermediates must return a list"
    for f in feats:
        t = f[0] if isinstance(f, tuple) else f
        assert t.shape[0] == x.shape[0] and torch.isfinite(t).all()

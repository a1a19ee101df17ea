"""One ``forward_intermediates`` contract on every registered model, timm's (``timm/models/vision_transformer.py``).

``forward_intermediates(x, indices=None, [return_prefix_tokens=False,] norm=False, stop_early=False,
output_fmt=<native>, intermediates_only=False)``: ``indices`` ``None`` = all blocks (stages / levels), an int ``n``
= the last ``n``, a sequence = those indices (negative from the end); the result is the list when
``intermediates_only`` and ``(final, list)`` otherwise, with ``final`` what ``forward_features`` returns, so
``forward_head(final) == forward(x)``. Every model at its ``tiny`` overrides, as tests/test_registry_smoke.py.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, List, Tuple

import pytest
import torch

# timm's two signatures (up to ``intermediates_only``): most models, and ViT-likes with prefix (class) tokens
TIMM_NAMES = ("x", "indices", "norm", "stop_early", "output_fmt", "intermediates_only")
TIMM_PREFIX_NAMES = ("x", "indices", "return_prefix_tokens", "norm", "stop_early", "output_fmt", "intermediates_only")

# being moved onto a shared factorised encoder by another change, which gives them this signature
def _cases() -> List[Any]:
    cases = []
    for pkg in ("backbones", "medvit", "videovit"):
        reg = importlib.import_module(pkg).registry
        for name in reg.list_models():
            if not reg.entrypoint(name).__module__.startswith(pkg + "."):
                continue  # stand-ins registered by test suites
            cases.append(pytest.param(reg, name, id=f"{pkg}:{name}"))
    return cases


CASES = _cases()


def _build(reg, name: str) -> Tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = reg.create_model(name, **reg.tiny_overrides(name)).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(1))
    return model, x


def _assert_same(a: List[torch.Tensor], b: List[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_timm_names_are_timms() -> None:
    """The two reference name lists are those of timm's Swin / BEiT (which stop at ``intermediates_only``)."""
    from timm.models.beit import Beit
    from timm.models.swin_transformer import SwinTransformer
    assert tuple(inspect.signature(SwinTransformer.forward_intermediates).parameters)[1:] == TIMM_NAMES
    assert tuple(inspect.signature(Beit.forward_intermediates).parameters)[1:] == TIMM_PREFIX_NAMES


@pytest.mark.parametrize("reg,name", CASES)
def test_signature_is_timms(reg, name: str) -> None:
    model, _ = _build(reg, name)
    params = inspect.signature(model.forward_intermediates).parameters
    assert tuple(params) in (TIMM_NAMES, TIMM_PREFIX_NAMES), f"{name}: {tuple(params)}"
    defaults = {k: p.default for k, p in params.items() if k != "x"}
    assert defaults["indices"] is None and defaults["norm"] is False and defaults["stop_early"] is False
    assert defaults["intermediates_only"] is False and defaults.get("return_prefix_tokens", False) is False


@pytest.mark.parametrize("reg,name", CASES)
def test_indices_and_final(reg, name: str) -> None:
    model, x = _build(reg, name)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
        n = len(every)
        assert isinstance(every, list) and n >= 2 and all(isinstance(t, torch.Tensor) for t in every)
        # None = all: n is also the largest valid "last n", and n + 1 is out of range
        _assert_same(model.forward_intermediates(x, indices=n, intermediates_only=True), every)
        with pytest.raises(ValueError):
            model.forward_intermediates(x, indices=n + 1, intermediates_only=True)
        _assert_same(model.forward_intermediates(x, indices=2, intermediates_only=True), every[-2:])
        _assert_same(model.forward_intermediates(x, indices=[0, -1], intermediates_only=True), [every[0], every[-1]])
        _assert_same(model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True),
                     every[:1])
        out = model(x)
        final, inter = model.forward_intermediates(x, indices=[0, -1])
        torch.testing.assert_close(model.forward_head(final), out)
        torch.testing.assert_close(final, model.forward_features(x))
        _assert_same(inter, [every[0], every[-1]])
        final, _ = model.forward_intermediates(x, indices=[0], stop_early=True)  # final stays the whole model's
        torch.testing.assert_close(model.forward_head(final), out)

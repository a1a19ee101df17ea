"""``backbones.layers.Linear``: the CPU autocast training path gives exactly ``nn.Linear``'s values and gradients."""

import pytest
import torch
from torch import nn

from backbones.layers import Linear
import importlib
from backbones.layers.linear import _transpose_first, uses_fast_backward
from engine.context import cpu_has_native_bf16

linear_module = importlib.import_module("backbones.layers.linear")  # the package re-exports a function `linear`


def _run(layer: nn.Module, x: torch.Tensor, g: torch.Tensor, autocast: bool):
    x = x.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.backward(g.to(y.dtype))
    grads = [x.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return y, grads


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(3, 7), (5,)])
@pytest.mark.parametrize("features", [(16, 24), (512, 256)])  # strided / copied transposed gradient
@pytest.mark.parametrize("amx", [True, False])
def test_autocast_training_path_is_bitwise_nn_linear(bias, lead, features, amx, monkeypatch):
    monkeypatch.setattr(linear_module, "cpu_has_amx", lambda: amx)  # both branches run on any CPU
    torch.manual_seed(0)
    K, N = features
    assert _transpose_first(N, K) == (features == (512, 256))
    ref = nn.Linear(K, N, bias=bias)
    fast = Linear(K, N, bias=bias)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(*lead, K)
    g = torch.randn(*lead, N)
    y_ref, g_ref = _run(ref, x, g, autocast=True)
    y, grads = _run(fast, x, g, autocast=True)
    # the fast path runs on AMX only; elsewhere it is plain F.linear under autocast
    assert y.dtype == torch.bfloat16 and ("AutocastLinearCPU" in type(y.grad_fn).__name__) == amx
    assert torch.equal(y, y_ref)
    for a, b in zip(grads, g_ref):
        assert a.dtype == b.dtype == torch.float32  # weight/bias grads land in the parameters' dtype
        _assert_same_bf16_product(a, b)


def _assert_same_bf16_product(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bitwise on oneDNN's bf16 kernels (native bf16); within one bf16 rounding where PyTorch emulates bf16 (an
    AVX2 CPU), whose fallback kernel can round a strided and a contiguous operand's product differently."""
    if cpu_has_native_bf16():
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=2 ** -7, atol=1e-6)


def test_non_contiguous_input_and_frozen_weight(monkeypatch):
    monkeypatch.setattr(linear_module, "cpu_has_amx", lambda: True)
    torch.manual_seed(1)
    ref, fast = nn.Linear(8, 4), Linear(8, 4)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(6, 8, 5).transpose(1, 2)  # (6, 5, 8), non-contiguous
    g = torch.randn(6, 5, 4)
    y_ref, g_ref = _run(ref, x, g, autocast=True)
    y, grads = _run(fast, x, g, autocast=True)
    for a, b in zip(grads, g_ref):
        assert torch.equal(a, b)
    fast.weight.requires_grad_(False)
    assert not uses_fast_backward(x, fast.weight)


def test_other_modes_are_plain_f_linear(monkeypatch):
    monkeypatch.setattr(linear_module, "cpu_has_amx", lambda: True)
    fc = Linear(8, 4)
    x = torch.randn(2, 8)
    assert not uses_fast_backward(x, fc.weight)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_fast_backward(x, fc.weight)
        with torch.no_grad():
            assert not uses_fast_backward(x, fc.weight)
            assert fc(x).grad_fn is None
    torch.testing.assert_close(fc(x), nn.functional.linear(x, fc.weight, fc.bias), rtol=0, atol=0)


def test_cpus_without_amx_take_plain_f_linear(monkeypatch):
    monkeypatch.setattr(linear_module, "cpu_has_amx", lambda: False)
    fc = Linear(8, 4)
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_fast_backward(x, fc.weight)
        assert "AutocastLinearCPU" not in type(fc(x).grad_fn).__name__

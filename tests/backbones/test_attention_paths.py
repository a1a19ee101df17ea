"""``backbones.layers.sdpa``: the explicit-softmax path of CPU bf16 training is the same attention as SDPA, is
taken only for short keys or a learned mask, and saves at most one output-sized tensor more for backward than SDPA's
flash kernel."""

import pytest
import torch
import torch.nn.functional as F

from backbones.layers import sdpa
from backbones.layers.attention import _math_is_better
from vtk_testing import autograd_nodes as _graph


def _qkv(B, H, N, M, D, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, H, M, D, generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, H, M, D, generator=g).to(dtype).requires_grad_()
    return q, k, v


def _saved_bytes(fn) -> int:
    total = {}

    def pack(t):
        total[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total.values())


@pytest.mark.parametrize("with_bias", [False, True])
def test_short_keys_take_the_math_path_with_sdpa_values_and_grads(with_bias):
    q, k, v = _qkv(2, 3, 8, 8, 16)
    bias = torch.randn(1, 3, 8, 8) if with_bias else None
    assert _math_is_better(q, k, 0.0)
    out = sdpa(q, k, v, bias)
    assert "SoftmaxBackward0" in _graph(out)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, attn_mask=None if bias is None else bias.double())
    torch.testing.assert_close(out.double(), ref, atol=0.03, rtol=0.02)  # bf16 products
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), g.to(out.dtype))
    grads_ref = torch.autograd.grad(ref, ref_in, g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a.double(), b, atol=0.05, rtol=0.05)


def test_long_keys_inference_fp32_and_dropout_stay_on_sdpa():
    q, k, v = _qkv(1, 2, 40, 40, 16)  # M = 40 > 2 Dh
    assert not _math_is_better(q, k, 0.0)
    assert "SoftmaxBackward0" not in _graph(sdpa(q, k, v))
    q, k, v = _qkv(1, 2, 8, 8, 16)
    assert not _math_is_better(q, k, 0.1)  # dropout
    with torch.no_grad():
        assert not _math_is_better(q, k, 0.0)
    qf, kf, vf = _qkv(1, 2, 8, 8, 16, dtype=torch.float32)
    assert not _math_is_better(qf, kf, 0.0)


@pytest.mark.parametrize("M", [8, 16, 18, 24, 32])
def test_math_path_saves_at_most_one_output_more_than_flash(M):
    D = 16  # M <= 2 D; nothing more than flash for M <= D + 2
    q, k, v = _qkv(2, 4, 32, M, D)
    math_bytes = _saved_bytes(lambda: sdpa(q, k, v))
    flash_bytes = _saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    extra = 0 if M <= D + 2 else q.numel() * q.element_size()
    assert math_bytes <= flash_bytes + extra, (math_bytes, flash_bytes, extra)


def test_a_learned_bias_takes_the_math_path_whatever_the_keys():
    """A bias that needs a gradient (Swin's relative-position table) has no fused CPU kernel: SDPA would fall back
    to fp32 math; vtk runs the same math in bf16 and the bias gets SDPA's gradient."""
    q, k, v = _qkv(4, 3, 49, 49, 16)  # M = 49 > Dh + 2
    table = torch.randn(1, 3, 49, 49, requires_grad=True)
    assert not _math_is_better(q, k, 0.0, table.detach())
    assert _math_is_better(q, k, 0.0, table)
    out = sdpa(q, k, v, table)
    assert "SoftmaxBackward0" in _graph(out)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, table)]
    ref = F.scaled_dot_product_attention(*ref_in[:3], attn_mask=ref_in[3])
    torch.testing.assert_close(out.double(), ref, atol=0.03, rtol=0.02)
    g = torch.randn_like(ref)
    (gb,) = torch.autograd.grad(out, table, g.to(out.dtype))
    (gb_ref,) = torch.autograd.grad(ref, ref_in[3], g)
    assert gb.dtype == torch.float32
    assert (gb.double() - gb_ref).norm() <= 0.02 * gb_ref.norm()
    with torch.no_grad():
        assert not _math_is_better(q, k, 0.0, table)  # inference keeps the fused kernel

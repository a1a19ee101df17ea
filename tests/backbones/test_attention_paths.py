"""``backbones.layers.sdpa``: the explicit-softmax path of CPU bf16 training is the same attention as SDPA, is
taken for up to ``_MAX_KEYS`` keys or a learned mask, and (without a learned mask) saves no more for backward than SDPA's
flash kernel: its probabilities are recomputed in backward, with the gradients of autograd through the explicit
matmuls bit for bit."""

import pytest
import torch
import torch.nn.functional as F

from backbones.layers import Attention, sdpa
from backbones.layers import attention as attention_mod
from backbones.layers.attention import _MAX_KEYS, _blocks, _math_is_better, _probs, _RecomputedAttention
from benchmarks._common import TensorPeak
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
    assert "_RecomputedAttentionBackward" in _graph(out)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, attn_mask=None if bias is None else bias.double())
    torch.testing.assert_close(out.double(), ref, atol=0.03, rtol=0.02)  # bf16 products
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), g.to(out.dtype))
    grads_ref = torch.autograd.grad(ref, ref_in, g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a.double(), b, atol=0.05, rtol=0.05)


def test_long_keys_inference_fp32_and_dropout_stay_on_sdpa():
    q, k, v = _qkv(1, 2, 4, _MAX_KEYS + 1, 8)  # more keys than the explicit form is faster for
    assert not _math_is_better(q, k, 0.0)
    assert not {"SoftmaxBackward0", "_RecomputedAttentionBackward"} & set(_graph(sdpa(q, k, v)))
    q, k, v = _qkv(1, 2, 8, 8, 16)
    assert not _math_is_better(q, k, 0.1)  # dropout
    with torch.no_grad():
        assert not _math_is_better(q, k, 0.0)
    qf, kf, vf = _qkv(1, 2, 8, 8, 16, dtype=torch.float32)
    assert not _math_is_better(qf, kf, 0.0)


@pytest.mark.parametrize("M", [8, 16, 32, 100])
def test_math_path_saves_less_than_flash(M):
    D = 16  # q, k, v against flash's q, k, v, output and log-sum-exp
    q, k, v = _qkv(2, 4, 32, M, D)
    math_bytes = _saved_bytes(lambda: sdpa(q, k, v))
    flash_bytes = _saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    assert math_bytes < flash_bytes, (math_bytes, flash_bytes)
    assert math_bytes == sum(t.numel() * t.element_size() for t in (q, k, v))


def test_attention_layer_holds_no_more_after_forward_on_the_math_path_than_on_flash(monkeypatch):
    """Bytes still live after the forward (its output and whatever backward will need, however it is kept). In a
    layer flash's output is also the output projection's saved input, while the explicit output is copied by the
    head merge; with the probabilities recomputed the layer still holds no more than with flash."""
    torch.manual_seed(0)
    layer = Attention(64, num_heads=4).to(torch.bfloat16)  # Dh = 16
    x = torch.randn(2, 24, 64, dtype=torch.bfloat16, requires_grad=True)  # N = M = 24 <= _MAX_KEYS

    def held(expect_math):
        with TensorPeak() as m:
            out = layer(x)
        assert ("_RecomputedAttentionBackward" in _graph(out)) == expect_math
        return m.current

    math_bytes = held(True)
    monkeypatch.setattr(attention_mod, "_math_is_better", lambda *a: False)
    flash_bytes = held(False)
    assert math_bytes <= flash_bytes, (math_bytes, flash_bytes)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("block_bytes", [None, 1000, 1500, 3000])
def test_recomputed_attention_gradients_equal_autograd_bit_for_bit(with_mask, block_bytes, monkeypatch):
    """Against autograd through the same explicit matmuls and softmax, on the non-contiguous q/k/v views a fused
    qkv projection gives, with keys of another length than the queries; in one block, and in blocks of one batch
    index and one or a few heads (``_BLOCK_BYTES`` lowered)."""
    if block_bytes is not None:
        monkeypatch.setattr(attention_mod, "_BLOCK_BYTES", block_bytes)
    g = torch.Generator().manual_seed(3)
    B, H, N, M, D = 2, 3, 12, 10, 16
    q = torch.randn(B, H, N, D, generator=g).bfloat16().requires_grad_()
    kv = torch.randn(B, M, 2, H, D, generator=g).bfloat16().requires_grad_()
    mask = torch.randn(1, H, N, M, generator=g).bfloat16() if with_mask else None
    grad_out = torch.randn(B, H, N, D, generator=g).bfloat16()

    def run(fn):
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, M, D) views
        out = fn(q, k, v)
        return (out, *torch.autograd.grad(out, (q, kv), grad_out))

    ref = run(lambda q, k, v: _probs(q, k, mask) @ v)
    got = run(lambda q, k, v: _RecomputedAttention.apply(q, k, v, mask))
    per_index = N * M * q.element_size() * 3  # the backward's temporaries per (batch, head)
    assert len(_blocks((B, H), per_index)) == {None: 1, 1000: B * H, 1500: B * 2, 3000: B}[block_bytes]
    for a, b in zip(got, ref):
        assert torch.equal(a, b), (a - b).abs().max()


def test_attention_layer_trains_to_the_bit_as_through_autograd(monkeypatch):
    """A whole layer: output, input gradient and every parameter gradient equal those of autograd through the
    explicit matmuls (the path the recomputation replaced), so runs that took it are unchanged."""
    torch.manual_seed(0)
    layer = Attention(64, num_heads=4)
    x = torch.randn(2, 24, 64, requires_grad=True)

    def run():
        layer.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        nodes.append(set(_graph(out)))
        out.float().square().mean().backward()
        return [out.detach(), x.grad, *(p.grad for p in layer.parameters())]

    nodes = []
    got = run()
    monkeypatch.setattr(attention_mod, "_RecomputedAttention",
                        type("Autograd", (), {"apply": staticmethod(lambda q, k, v, m: _probs(q, k, m) @ v)}))
    ref = run()
    assert "_RecomputedAttentionBackward" in nodes[0] and "SoftmaxBackward0" in nodes[1]
    for a, b in zip(got, ref):
        assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("block_bytes", [None, 200])
def test_recomputed_attention_passes_gradcheck_with_broadcast_keys(block_bytes, monkeypatch):
    if block_bytes is not None:
        monkeypatch.setattr(attention_mod, "_BLOCK_BYTES", block_bytes)  # one (batch, head) per block
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)  # batch broadcast
    v = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(_RecomputedAttention.apply, (q, k, v, mask))


def test_a_learned_bias_takes_the_math_path_whatever_the_keys():
    """A bias that needs a gradient (Swin's relative-position table) has no fused CPU kernel: SDPA would fall back
    to fp32 math; vtk runs the same math in bf16 and the bias gets SDPA's gradient."""
    q, k, v = _qkv(1, 2, 6, _MAX_KEYS + 3, 8)  # more keys than the explicit form is otherwise taken for
    table = torch.randn(1, 2, 6, _MAX_KEYS + 3, requires_grad=True)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_learned_mask_takes_the_explicit_path_in_fp32_too_with_sdpa_values_and_grads(dtype):
    """Swin's relative-position bias needs a gradient: SDPA would fall back to its math kernel (with its
    all-masked-row guards); the explicit form scales q first, as timm's and MONAI's Swin do."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 49, 16, generator=g).to(dtype).requires_grad_() for _ in range(3))
    bias = torch.randn(1, 3, 49, 49, generator=g).requires_grad_()
    assert _math_is_better(q, k, 0.0, bias.to(dtype))
    out = sdpa(q, k, v, bias)
    graph = set(_graph(out))
    assert "SoftmaxBackward0" in graph and "SafeSoftmaxBackward0" not in graph  # not SDPA's math kernel
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    ref = F.scaled_dot_product_attention(*ref_in[:3], attn_mask=ref_in[3])
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.03, rtol=0.02)
    torch.testing.assert_close(out.double(), ref, **tol)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v, bias), grad.to(dtype))
    for a, b in zip(grads, torch.autograd.grad(ref, ref_in, grad)):
        torch.testing.assert_close(a.double(), b, **(tol if dtype == torch.float32 else dict(atol=0.05, rtol=0.05)))

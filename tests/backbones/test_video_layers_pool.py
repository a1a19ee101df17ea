"""MViT pooling attention (Fan et al., arXiv:2104.11227) against pytorchvideo's layers, plus shapes and args."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones.layers.pooling_attention import MultiScaleAttention, MultiScaleBlock, attention_pool
from videovit.convert.pytorchvideo_mvit import fuse_qkv

pv_attn = pytest.importorskip("pytorchvideo.layers.attention")

THW = (2, 4, 4)


def _tokens(c: int, b: int = 2, cls: int = 1) -> torch.Tensor:
    return torch.randn(b, cls + 2 * 4 * 4, c, generator=torch.Generator().manual_seed(0))


def _load_from_pv(ours: nn.Module, ref: nn.Module, prefix: str) -> None:
    """Load a pytorchvideo layer through the MViT converter's q/k/v fusion (keys put under ``prefix``)."""
    sd = fuse_qkv({prefix + k: v for k, v in ref.state_dict().items()})
    ours.load_state_dict({k[len(prefix):]: v for k, v in sd.items()})


def _randomise(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


@pytest.mark.parametrize("mode", ["conv", "avg", "max"])
def test_attention_matches_pytorchvideo(mode):
    k = (3, 3, 3) if mode == "conv" else (1, 3, 3)  # torch's Avg/MaxPool3d reject a kernel longer than T
    kw = dict(kernel_q=k, kernel_kv=k, stride_q=(1, 2, 2), stride_kv=(1, 2, 2))
    ref = _randomise(pv_attn.MultiScaleAttention(16, num_heads=2, qkv_bias=True, pool_mode=mode, **kw))
    ours = MultiScaleAttention(16, num_heads=2, mode=mode, **kw).eval()
    _load_from_pv(ours, ref, "blocks.0.attn.")
    x = _tokens(16)
    with torch.no_grad():
        (y_ref, thw_ref), (y, thw) = ref(x, list(THW)), ours(x, THW)
    assert tuple(thw_ref) == thw == (2, 2, 2)
    assert y.shape == (2, 1 + 8, 16)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def test_block_matches_pytorchvideo_with_widening():
    kw = dict(kernel_q=(3, 3, 3), kernel_kv=(3, 3, 3), stride_q=(1, 2, 2), stride_kv=(1, 1, 1))
    ref = _randomise(pv_attn.MultiScaleBlock(16, 32, num_heads=2, qkv_bias=True,
                                             norm_layer=nn.LayerNorm, **kw))
    ours = MultiScaleBlock(16, 32, num_heads=2, **kw).eval()
    _load_from_pv(ours, ref, "blocks.0.")
    x = _tokens(16)
    with torch.no_grad():
        (y_ref, thw_ref), (y, thw) = ref(x, list(THW)), ours(x, THW)
    assert thw == tuple(thw_ref) == (2, 2, 2) and y.shape == (2, 9, 32)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def test_no_cls_and_no_pooling_is_plain_attention():
    ours = MultiScaleAttention(16, num_heads=4, num_prefix_tokens=0).eval()
    assert ours.pool_q is None and ours.pool_k is None
    x = _tokens(16, cls=0)
    q, k, v = ours.qkv(x).reshape(2, 32, 3, 4, 4).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    ref = ours.proj((attn @ v).transpose(1, 2).reshape(2, 32, 16))
    y, thw = ours(x, THW)
    assert thw == THW
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_residual_pooling_adds_pooled_q():
    kw = dict(kernel_q=(3, 3, 3), stride_q=(1, 2, 2), kernel_kv=(3, 3, 3), stride_kv=(1, 2, 2))
    plain = MultiScaleAttention(16, num_heads=2, **kw).eval()
    res = MultiScaleAttention(16, num_heads=2, residual_pooling=True, **kw).eval()
    res.load_state_dict(plain.state_dict())
    x = _tokens(16)
    with torch.no_grad():
        assert not torch.allclose(plain(x, THW)[0], res(x, THW)[0])


def test_attention_pool_keeps_prefix_and_grid():
    x = torch.randn(2, 3, 1 + 2 * 4 * 4, 8)  # (B, nH, N, Dh)
    y, thw = attention_pool(x, nn.MaxPool3d((1, 2, 2), (1, 2, 2)), THW, num_prefix_tokens=1)
    assert thw == (2, 2, 2) and y.shape == (2, 3, 9, 8)
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    same, thw2 = attention_pool(x, None, THW)
    assert same is x and thw2 == THW


def test_block_backward_and_grad():
    blk = MultiScaleBlock(16, 16, num_heads=2, kernel_kv=(3, 3, 3), stride_kv=(1, 2, 2), drop_path=0.1)
    x = _tokens(16).requires_grad_()
    y, _ = blk(x, THW)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and blk.attn.pool_k.weight.grad is not None


def test_ill_args():
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleAttention(18, num_heads=4)
    with pytest.raises(ValueError, match="pooling mode"):
        MultiScaleAttention(16, num_heads=2, mode="lp", kernel_q=(3, 3, 3), stride_q=(1, 2, 2))


def _ncdhw_pool(x: torch.Tensor, pool: nn.Module, thw, prefix: int = 1) -> torch.Tensor:
    """The conv pooling as pytorchvideo runs it: tokens to a contiguous NCDHW map, conv, back (the reference)."""
    B, nH, N, Dh = x.shape
    grid = x[:, :, prefix:].reshape(B * nH, *thw, Dh).permute(0, 4, 1, 2, 3).contiguous()  # (B*nH, Dh, T, H, W)
    y = pool(grid)
    return torch.cat((x[:, :, :prefix], y.reshape(B, nH, Dh, -1).transpose(2, 3)), dim=2)


def _qkv_view(B: int, nH: int, N: int, Dh: int) -> torch.Tensor:
    """A leaf and its ``q`` as the fused qkv projection gives it: a strided ``(B, nH, N, Dh)`` view."""
    leaf = torch.randn(B, N, 3, nH, Dh, generator=torch.Generator().manual_seed(1)).requires_grad_()
    return leaf, leaf.permute(2, 0, 3, 1, 4)[0]


@pytest.mark.parametrize("B,nH,stride", [(1, 1, (1, 2, 2)), (2, 2, (1, 1, 1)), (1, 2, (2, 2, 2))])
def test_cpu_conv_pool_runs_channels_last_and_equals_the_ncdhw_conv(B, nH, stride):
    pool = _randomise(nn.Conv3d(8, 8, (3, 3, 3), stride, (1, 1, 1), groups=8, bias=False)).train()
    seen = []
    pool.register_forward_pre_hook(lambda m, i: seen.append(i[0].is_contiguous(memory_format=torch.channels_last_3d)))
    leaf, q = _qkv_view(B, nH, 1 + 2 * 4 * 4, 8)
    y, _ = attention_pool(q, pool, THW)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(y, (leaf, pool.weight), g)
    assert seen == [True]  # the tokens' own layout, no NCDHW copy
    ref = _ncdhw_pool(q, pool, THW)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, torch.autograd.grad(ref, (leaf, pool.weight), g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cpu_conv_pool_runs_in_fp32_under_bf16_autocast():
    """oneDNN's bf16 depthwise 3D conv is 4x slower than fp32 channels-last on the CPU: under autocast the pooling
    conv takes fp32 inputs and its fp32 weight as it is, and hands bf16 on like the rest of the block."""
    pool = _randomise(nn.Conv3d(8, 8, (3, 3, 3), (1, 2, 2), (1, 1, 1), groups=8, bias=False)).train()
    leaf, q = _qkv_view(2, 2, 1 + 2 * 4 * 4, 8)
    qb = q.bfloat16()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t):
        with torch.autocast("cpu", torch.bfloat16):
            y, thw = attention_pool(qb, pool, THW)
    assert y.dtype == torch.bfloat16 and thw == (2, 2, 2)
    grid = 2 * 2 * 2 * 4 * 4 * 8  # B*nH * T*H*W * Dh
    assert (torch.bfloat16, grid) in saved and (torch.float32, grid) not in saved  # the input saved as it came
    ref = _ncdhw_pool(qb.float(), pool, THW)  # fp32 math on the same bf16 tokens, rounded once at the end
    torch.testing.assert_close(y, ref.bfloat16(), rtol=0, atol=0)
    y.float().sum().backward()
    assert pool.weight.grad.dtype == torch.float32 and leaf.grad is not None and torch.isfinite(leaf.grad).all()
    q32 = qb.detach().float().requires_grad_()
    ref_grads = torch.autograd.grad(_ncdhw_pool(q32, pool, THW).sum(), (q32, pool.weight))
    torch.testing.assert_close(pool.weight.grad, ref_grads[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(leaf.grad[:, :, 0].float(), ref_grads[0].transpose(1, 2).bfloat16().float())


def test_bf16_weights_and_pools_keep_the_ncdhw_path():
    from backbones.layers.pooling_attention import _cpu_conv_pool

    x = torch.randn(1, 1, 33, 8)
    assert _cpu_conv_pool(x, nn.Conv3d(8, 8, 3, groups=8))
    assert not _cpu_conv_pool(x, nn.Conv3d(8, 8, 3, groups=8).bfloat16())
    assert not _cpu_conv_pool(x, nn.MaxPool3d(3))
    assert not _cpu_conv_pool(x.to("meta"), nn.Conv3d(8, 8, 3, groups=8))

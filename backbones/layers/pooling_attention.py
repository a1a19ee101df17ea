"""Multiscale pooling attention and the MViT block.

Fan et al., "Multiscale Vision Transformers", arXiv:2104.11227, Sec. 3.1 (Multi Head Pooling Attention, MHPA) and
Sec. 3.2 (stages with channel and head expansion). Residual pooling (``x = attn + pooled q``) comes from MViTv2:
Li et al., "MViTv2: Improved Multiscale Vision Transformers", arXiv:2112.01526, Sec. 4.1; it is off by default
(MViT v1).

Key names follow PySlowFast / timm ``mvitv2`` (``qkv``, ``pool_{q,k,v}``, ``norm_{q,k,v}``, ``proj``), so a
PySlowFast checkpoint maps one to one and pytorchvideo's separate ``q``/``k``/``v`` are fused by the converter.
The token grid is passed explicitly: ``x, thw = blk(x, thw)``.

Dataflow of :class:`MultiScaleBlock`::

    x (B, 1+T*H*W, C) ------------------------------- MaxPool3d(stride_q) (skip) --+
      -> LN -> qkv -> pool_q/pool_k/pool_v (conv, per head) -> LN -> SDPA -> proj -> +  (B, 1+T'*H'*W', C)
      -> LN --+-> Mlp(C -> C_out) ------------------------------------------------- +  (B, 1+T'*H'*W', C_out)
              +-> proj(C -> C_out) (only when C != C_out) -------------------------/
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Type

import torch
from torch import nn

from backbones.layers.attention import sdpa
from backbones.layers.drop import DropPath
from backbones.layers.linear import Linear
from backbones.layers.mlp import Mlp

__all__ = ["attention_pool", "MultiScaleAttention", "MultiScaleBlock", "skip_pool_kernel"]

Thw = Tuple[int, int, int]
POOL_MODES = ("conv", "avg", "max")


def _is_identity(kernel: Optional[Sequence[int]], stride: Optional[Sequence[int]]) -> bool:
    """A pooling with no kernel, or with kernel and stride all 1, is skipped (as pytorchvideo/PySlowFast)."""
    return kernel is None or len(kernel) == 0 or (math.prod(kernel) == 1 and math.prod(stride or (1,)) == 1)


def skip_pool_kernel(stride_q: Sequence[int]) -> Tuple[int, ...]:
    """Kernel of the residual max pooling: ``s + 1`` where the stride ``s > 1``, else ``s`` (MViT Sec. 3.2)."""
    return tuple(s + 1 if s > 1 else s for s in stride_q)


def attention_pool(x: torch.Tensor, pool: Optional[nn.Module], thw: Thw, num_prefix_tokens: int = 1,
                   norm: Optional[nn.Module] = None) -> Tuple[torch.Tensor, Thw]:
    """Pool the grid tokens of ``x`` (prefix tokens such as CLS pass through), then normalise.

    Args:
        x: ``(B, nH, N, Dh)`` per-head tokens or ``(B, N, C)``; ``N = num_prefix_tokens + T*H*W``.
        pool: A 3D pooling/conv module over ``(B*nH, Dh, T, H, W)``; ``None`` returns ``x`` unchanged.
        thw: The grid ``(T, H, W)`` of ``x``.
        num_prefix_tokens: Leading tokens that are not pooled.
        norm: Optional norm applied after the prefix tokens are put back (they are normalised too).

    Returns:
        The pooled tokens (same rank as ``x``) and the new grid.
    """
    if pool is None:
        return x, thw
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(1)  # (B, 1, N, C)
    prefix, x = x[:, :, :num_prefix_tokens], x[:, :, num_prefix_tokens:]
    B, nH, L, Dh = x.shape
    T, H, W = thw
    if _cpu_conv_pool(x, pool):
        x = _conv_pool_channels_last(x.reshape(B * nH, T, H, W, Dh), pool)  # (B*nH, T', H', W', Dh)
        thw = (x.shape[1], x.shape[2], x.shape[3])
        x = x.reshape(B, nH, -1, Dh).to(prefix.dtype)  # (B, nH, T'*H'*W', Dh)
    else:
        x = x.reshape(B * nH, T, H, W, Dh).permute(0, 4, 1, 2, 3).contiguous()  # (B*nH, Dh, T, H, W)
        x = pool(x)
        thw = (x.shape[2], x.shape[3], x.shape[4])
        x = x.reshape(B, nH, Dh, -1).transpose(2, 3)  # (B, nH, T'*H'*W', Dh)
    x = torch.cat((prefix, x), dim=2)
    if norm is not None:
        x = norm(x)
    return (x.squeeze(1) if squeeze else x), thw


def _cpu_conv_pool(x: torch.Tensor, pool: nn.Module) -> bool:
    """Whether ``pool`` is a depthwise conv with fp32 weights running on the CPU (see
    :func:`_conv_pool_channels_last`)."""
    return x.device.type == "cpu" and isinstance(pool, nn.Conv3d) and pool.weight.dtype == torch.float32


def _conv_pool_channels_last(x: torch.Tensor, pool: nn.Conv3d) -> torch.Tensor:
    """The depthwise conv pooling on the CPU: channels-last and in fp32, autocast or not.

    The tokens ``(B', T, H, W, Dh)`` already are the channels-last layout of the conv's ``(B', Dh, T, H, W)``
    input, so the conv reads them through a permuted view and writes channels-last, and the result is a view of
    the tokens again: no layout copy on either side. oneDNN's depthwise 3D convolution is slow in bf16 on the CPU
    and in fp32 on NCDHW: forward + backward of MViT-B's 36 pooling convs at 16x112^2 take 214 ms in bf16 NCDHW
    (as pytorchvideo runs them under autocast), 107 ms in fp32 NCDHW and 48 ms in fp32 channels-last (AMD EPYC,
    2 threads). The conv has few FLOPs (27 per output element and channel), so fp32 costs nothing in matrix rate,
    and its fp32 weight is used as it is, without autocast's cast.

    Args:
        x: ``(B', T, H, W, Dh)`` grid tokens, any float dtype.
        pool: The ``nn.Conv3d(Dh, Dh, groups=Dh)`` with fp32 weights.

    Returns:
        ``(B', T', H', W', Dh)`` in fp32, contiguous.
    """
    x = x.contiguous().permute(0, 4, 1, 2, 3)  # (B', Dh, T, H, W), channels-last strides
    with torch.autocast("cpu", enabled=False):
        if x.dtype == torch.float32:
            y = pool(x)
        else:  # saves the low-precision input, not its fp32 copy: no more bytes held than the bf16 conv
            y = _UpcastConv.apply(x, pool.weight, pool.stride, pool.padding, pool.groups)
    return y.permute(0, 2, 3, 4, 1).contiguous()  # (B', T', H', W', Dh); a view when oneDNN kept channels-last


class _UpcastConv(torch.autograd.Function):
    """A bias-free conv3d of a low-precision input with fp32 weights, computed in fp32, that saves the input as it
    came and casts it again in backward (fp32 output and weight gradient; the input's gradient in its dtype)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, groups)
        return torch.nn.functional.conv3d(x.float(), weight, None, stride, padding, 1, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        stride, padding, groups = ctx.conf
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad_y, x.float(), weight, None, stride, padding, (1, 1, 1), False, (0, 0, 0), groups,
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False))
        return (None if gx is None else gx.to(x.dtype)), gw, None, None, None


def _make_pool(mode: str, kernel: Sequence[int], stride: Sequence[int], channels: int) -> nn.Module:
    padding = tuple(k // 2 for k in kernel)
    if mode == "conv":
        return nn.Conv3d(channels, channels, tuple(kernel), stride=tuple(stride), padding=padding, groups=channels,
                         bias=False)
    op = nn.MaxPool3d if mode == "max" else nn.AvgPool3d
    return op(tuple(kernel), tuple(stride), padding, ceil_mode=False)


class MultiScaleAttention(nn.Module):
    """Multi-head pooling attention (MHPA): Q, K and V are pooled on the token grid before SDPA.

    Pooling follows the linear projection (``pool_first=False`` in pytorchvideo/PySlowFast). The CLS token is
    never pooled. ``norm_{q,k,v}`` (over ``head_dim``) follow each conv pooling.

    Args:
        dim: Input width ``C``.
        dim_out: Output width of ``qkv``/``proj`` (default ``dim``; MViT v1 keeps ``dim``).
        num_heads: Heads; must divide ``dim_out``.
        qkv_bias: Bias on the fused qkv projection.
        kernel_q: Q pooling kernel ``(kT, kH, kW)``; ``None`` (or all-1 kernel and stride) disables Q pooling.
        kernel_kv: K/V pooling kernel.
        stride_q: Q pooling stride; the output grid is the pooled Q grid.
        stride_kv: K/V pooling stride.
        mode: ``"conv"`` (learned depthwise conv, MViT default), ``"avg"`` or ``"max"``.
        norm_layer: Norm class after conv pooling.
        num_prefix_tokens: Leading non-grid tokens (1 with a CLS token, else 0).
        residual_pooling: Add the pooled Q to the attention output (MViTv2); off for MViT v1.
        attn_drop: Attention dropout.
        proj_drop: Dropout after ``proj``.

    Example::

        >>> attn = MultiScaleAttention(32, num_heads=2, kernel_q=(3, 3, 3), stride_q=(1, 2, 2),
        ...                            kernel_kv=(3, 3, 3), stride_kv=(1, 4, 4))
        >>> y, thw = attn(torch.randn(2, 1 + 4 * 8 * 8, 32), (4, 8, 8))
        >>> y.shape, thw
        (torch.Size([2, 65, 32]), (4, 4, 4))
    """

    def __init__(self, dim: int, dim_out: Optional[int] = None, num_heads: int = 8, qkv_bias: bool = True,
                 kernel_q: Optional[Sequence[int]] = None, kernel_kv: Optional[Sequence[int]] = None,
                 stride_q: Sequence[int] = (1, 1, 1), stride_kv: Sequence[int] = (1, 1, 1), mode: str = "conv",
                 norm_layer: Type[nn.Module] = nn.LayerNorm, num_prefix_tokens: int = 1,
                 residual_pooling: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % num_heads != 0:
            raise ValueError(f"dim_out {dim_out} should be divisible by num_heads {num_heads}")
        if mode not in POOL_MODES:
            raise ValueError(f"pooling mode must be one of {POOL_MODES}, got {mode!r}")
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.residual_pooling = residual_pooling
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool_q = self.norm_q = self.pool_k = self.norm_k = self.pool_v = self.norm_v = None
        if not _is_identity(kernel_q, stride_q):
            self.pool_q = _make_pool(mode, kernel_q, stride_q, self.head_dim)
            self.norm_q = norm_layer(self.head_dim) if mode == "conv" else None
        if not _is_identity(kernel_kv, stride_kv):
            self.pool_k = _make_pool(mode, kernel_kv, stride_kv, self.head_dim)
            self.norm_k = norm_layer(self.head_dim) if mode == "conv" else None
            self.pool_v = _make_pool(mode, kernel_kv, stride_kv, self.head_dim)
            self.norm_v = norm_layer(self.head_dim) if mode == "conv" else None

    def forward(self, x: torch.Tensor, thw: Thw) -> Tuple[torch.Tensor, Thw]:
        """``(B, P + T*H*W, C)`` on grid ``thw`` -> ``(B, P + T'*H'*W', C_out)`` on the pooled Q grid."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, nH, N, Dh)
        q, k, v = qkv.unbind(0)
        q, q_thw = attention_pool(q, self.pool_q, thw, self.num_prefix_tokens, self.norm_q)  # (B, nH, Nq, Dh)
        k, _ = attention_pool(k, self.pool_k, thw, self.num_prefix_tokens, self.norm_k)  # (B, nH, Nk, Dh)
        v, _ = attention_pool(v, self.pool_v, thw, self.num_prefix_tokens, self.norm_v)  # (B, nH, Nk, Dh)
        out = sdpa(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)  # (B, nH, Nq, Dh)
        if self.residual_pooling:
            out = out + q
        out = out.transpose(1, 2).reshape(B, q.shape[2], -1)  # (B, Nq, C_out)
        return self.proj_drop(self.proj(out)), q_thw


class MultiScaleBlock(nn.Module):
    """MViT transformer block: pooling attention with a max-pooled residual, then an MLP that may widen.

    As in MViT v1 (pytorchvideo/PySlowFast), the channel expansion of a stage happens in the *last* block of the
    previous stage: its MLP maps ``dim -> dim_out`` and the residual goes through ``proj`` (a linear on the
    normalised tokens). The residual path of the attention is max-pooled with ``stride_q`` so it matches the
    pooled Q grid.

    Args:
        dim: Input width.
        dim_out: Output width (after the MLP).
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        qkv_bias: Bias on qkv.
        drop_path: Stochastic depth of both branches.
        proj_drop: Dropout after the attention projection and in the MLP.
        attn_drop: Attention dropout.
        act_layer: MLP activation class.
        norm_layer: Norm class (``partial(nn.LayerNorm, eps=1e-6)`` in MViT).
        attn_norm_layer: Norm after conv pooling (pytorchvideo uses ``nn.LayerNorm`` with eps 1e-5 there).
        kernel_q, kernel_kv, stride_q, stride_kv, mode, num_prefix_tokens, residual_pooling: See
            :class:`MultiScaleAttention`.
        attn_layer: Attention class (called with the keywords above).
        mlp_layer: MLP class, called as ``mlp_layer(dim, hidden, dim_out, act_layer=, drop=)``.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 act_layer: Type[nn.Module] = nn.GELU, norm_layer: Type[nn.Module] = nn.LayerNorm,
                 attn_norm_layer: Type[nn.Module] = nn.LayerNorm, kernel_q: Optional[Sequence[int]] = None,
                 kernel_kv: Optional[Sequence[int]] = None, stride_q: Sequence[int] = (1, 1, 1),
                 stride_kv: Sequence[int] = (1, 1, 1), mode: str = "conv", num_prefix_tokens: int = 1,
                 residual_pooling: bool = False, attn_layer: Type[nn.Module] = MultiScaleAttention,
                 mlp_layer: Type[nn.Module] = Mlp) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.num_prefix_tokens = num_prefix_tokens
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, dim, num_heads=num_heads, qkv_bias=qkv_bias, kernel_q=kernel_q,
                               kernel_kv=kernel_kv, stride_q=stride_q, stride_kv=stride_kv, mode=mode,
                               norm_layer=attn_norm_layer, num_prefix_tokens=num_prefix_tokens,
                               residual_pooling=residual_pooling, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio), dim_out, act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.proj = Linear(dim, dim_out) if dim != dim_out else None
        skip = skip_pool_kernel(stride_q)
        self.pool_skip = None
        if math.prod(stride_q) > 1:
            self.pool_skip = nn.MaxPool3d(skip, tuple(stride_q), tuple(k // 2 for k in skip), ceil_mode=False)

    def forward(self, x: torch.Tensor, thw: Thw) -> Tuple[torch.Tensor, Thw]:
        """``(B, P + T*H*W, dim)`` -> ``(B, P + T'*H'*W', dim_out)`` and the new grid."""
        x_attn, thw_new = self.attn(self.norm1(x), thw)
        x, _ = attention_pool(x, self.pool_skip, thw, self.num_prefix_tokens)
        x = x + self.drop_path1(x_attn)
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if self.proj is not None:
            x = self.proj(x_norm)
        return x + self.drop_path2(x_mlp), thw_new

"""Multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``.

Vaswani et al., "Attention Is All You Need", arXiv:1706.03762. Key names follow timm (``qkv``, ``proj``,
``q_norm``, ``k_norm``) so timm state dicts map one to one. On CUDA, SDPA dispatches to the flash or
memory-efficient kernels; there is no per-head Python loop anywhere in vtk.
"""

from __future__ import annotations

from typing import Optional, Type

import torch
import torch.nn.functional as F
from torch import nn

from backbones.layers.linear import Linear

__all__ = ["Attention", "sdpa"]


def _math_is_better(q: torch.Tensor, k: torch.Tensor, dropout_p: float,
                    attn_mask: Optional[torch.Tensor] = None) -> bool:
    """Whether a bf16 CPU training call should run as explicit ``softmax(q k^T) v`` instead of SDPA's flash
    kernel.

    PyTorch's CPU flash backward is several times slower than the same attention through batched matmuls and a
    softmax (measured on an AMX Xeon, one thread, TimeSformer's temporal attention ``(196 * 12, 8, 64)`` in bf16:
    103 ms flash forward + backward against 39 ms), but the explicit form saves the probabilities
    ``(.., N, M)`` for backward where flash saves its output ``(.., N, Dh)`` and a log-sum-exp row. So it is taken
    only where that costs little memory: keys ``M <= 2 Dh`` (short temporal attention, pooled keys), in training
    (autograd on) on the CPU in bf16, without dropout. In a model the cost is the probabilities, at most two
    output-sized tensors per call: flash's saved output is also the output projection's saved input (one storage),
    while the explicit output is copied by the caller's head merge, which the projection saves instead (STAM at
    112^2, ``N = M = 50``, ``Dh = 64``: +10 MiB, 0.7% of the step's tensor peak, for a 1.19x faster bf16 step).
    MViT-B's pooled keys (129 of them, ``Dh = 96``) are the case between ``Dh`` and ``2 Dh``: its attention went
    from 59 ms (flash) to 15 ms per step, level with pytorchvideo's explicit attention, which saves the
    probabilities too. Long keys (ViT's 197 with ``Dh = 64``) keep flash. It is also taken whatever ``M``
    when the additive mask itself needs a gradient (a learned relative-position bias, as in Swin): no fused CPU
    kernel differentiates the mask, so SDPA falls back to its math kernel, which upcasts the bf16 inputs to fp32
    and saves fp32 probabilities (Swin-T 224^2 b1 bf16 step: 30 ms of bmm against timm's 9 ms). Everything else
    stays on SDPA's fused kernels.
    """
    if not (q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout_p == 0.0
            and torch.is_grad_enabled() and not torch.jit.is_tracing()):
        return False
    if attn_mask is not None and attn_mask.requires_grad:
        return True  # SDPA's own fallback: the same math, in fp32
    return (q.requires_grad or k.requires_grad) and k.shape[-2] <= 2 * q.shape[-1]


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``softmax(q k^T / sqrt(Dh) + attn_mask) v`` in the inputs' dtype (the softmax accumulates in fp32)."""
    with torch.autocast(q.device.type, enabled=False):
        attn = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (B, H, N, M)
        if attn_mask is not None:
            attn = attn + attn_mask  # already in q's dtype (sdpa casts it)
        return attn.softmax(dim=-1) @ v  # (B, H, N, Dh)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None,
         mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """SDPA with an optional additive ``bias`` and an optional boolean ``mask`` (True = attend).

    Short-key attention in CPU bf16 training runs as explicit matmuls + softmax (same function; see
    :func:`_math_is_better`), every other call through ``F.scaled_dot_product_attention``.

    Args:
        q, k, v: ``(B, H, N, Dh)`` (``k``/``v`` may have another length ``M``).
        bias: Additive float bias broadcastable to ``(B, H, N, M)`` (relative-position bias, ALiBi, ...).
        mask: Boolean mask broadcastable to ``(B, H, N, M)``; ``False`` positions are not attended.
        dropout_p: Attention dropout probability (pass 0 at eval).

    Returns:
        ``(B, H, N, Dh)``.
    """
    attn_mask = bias
    if mask is not None:
        m = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        attn_mask = m if attn_mask is None else attn_mask.to(q.dtype) + m
    elif attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    if _math_is_better(q, k, dropout_p, attn_mask):
        return _math_attention(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


class Attention(nn.Module):
    """Fused-qkv multi-head self-attention.

    Args:
        dim: Token width ``C``.
        num_heads: Number of heads; must divide ``dim``.
        qkv_bias: Bias on the fused qkv projection.
        qk_norm: Normalise q and k per head (``norm_layer`` over ``head_dim``).
        attn_drop: Attention dropout.
        proj_drop: Output dropout.
        norm_layer: Norm used when ``qk_norm``.
        proj_bias: Bias on the output projection.

    Example::

        >>> attn = Attention(64, num_heads=4)
        >>> attn(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer: Type[nn.Module] = nn.LayerNorm,
                 proj_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} should be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_heads(self, x: torch.Tensor) -> tuple:
        """``(B, N, C)`` -> q, k, v each ``(B, H, N, Dh)``."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: x ``(B, N, C)``; attn_bias additive ``(.., N, N)``; attn_mask boolean ``(.., N, N)``."""
        B, N, C = x.shape
        q, k, v = self.split_heads(x)
        x = sdpa(q, k, v, attn_bias, attn_mask, self.attn_drop if self.training else 0.0)  # (B, H, N, Dh)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(x))

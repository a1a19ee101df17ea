"""Multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``.

Vaswani et al., "Attention Is All You Need", arXiv:1706.03762. Key names follow timm (``qkv``, ``proj``,
``q_norm``, ``k_norm``) so timm state dicts map one to one. On CUDA, SDPA dispatches to the flash or
memory-efficient kernels; there is no per-head Python loop anywhere in vtk.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from backbones.layers.linear import Linear

__all__ = ["Attention", "sdpa"]


_MAX_KEYS = 512  # CPU flash catches up with the explicit form between 512 and 1024 keys (bf16, 12 heads, Dh 64)
_BLOCK_BYTES = 48 * 2 ** 20  # bound on the (.., N, M) temporaries one block of the explicit form holds


def _math_is_better(q: torch.Tensor, k: torch.Tensor, dropout_p: float,
                    attn_mask: Optional[torch.Tensor] = None) -> bool:
    """Whether a bf16 CPU training call should run as explicit ``softmax(q k^T) v`` instead of SDPA's flash
    kernel.

    PyTorch's CPU flash backward is slow. Forward + backward in bf16 on the 2-core EPYC, explicit
    (:class:`_RecomputedAttention`) against flash, best of 3 interleaved: ``(B, H, N, M, Dh) = (16, 12, 50, 50,
    64)`` (STAM's frames at 112^2) 4.8 against 15.6 ms, ``(4, 12, 197, 197, 64)`` (ViT-B b4) 10.2 against 15.4,
    ``(1, 1, 6273, 129, 96)`` (MViT-B's first block) 5.3 against 7.8, ``(1, 12, 785, 785, 64)`` 32 against 35, and
    flash ahead from about 1024 keys (1569: 209 against 151 ms); TimeSformer's temporal ``(196 * 12, 8, 64)`` on an
    AMX Xeon: 39 against 103 ms. The explicit form saves only q, k and v and recomputes the probabilities in
    backward, so it holds no more than flash (which also saves its output and a log-sum-exp row) and its ``(.., N,
    M)`` temporaries are bounded by ``_BLOCK_BYTES``. It is taken in training (autograd on) on the CPU in bf16,
    without dropout, for up to ``_MAX_KEYS`` keys. It is also taken whatever ``M``, and in fp32 too, when the
    additive mask itself needs a gradient (a learned relative-position bias, as in Swin): no fused CPU kernel
    differentiates the mask, so SDPA falls back to its math kernel, which upcasts bf16 inputs to fp32 and saves
    fp32 probabilities (Swin-T 224^2 b1 bf16 step: 30 ms of bmm against timm's 9 ms), and in fp32 adds its
    all-masked-row guards (``_safe_softmax``: ``isneginf``, ``all``, ``where``; 3 ms of Swin-T's 240 ms step).
    Everything else stays on SDPA's fused kernels.
    """
    if not (q.device.type == "cpu" and dropout_p == 0.0 and torch.is_grad_enabled() and not torch.jit.is_tracing()):
        return False
    if attn_mask is not None and attn_mask.requires_grad:
        return True  # SDPA's own fallback: the same math (in fp32 for bf16 inputs), with extra guards
    return q.dtype == torch.bfloat16 and (q.requires_grad or k.requires_grad) and k.shape[-2] <= _MAX_KEYS


def _probs(q: torch.Tensor, k: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``softmax(q k^T / sqrt(Dh) + attn_mask)`` in q's dtype (the softmax accumulates in fp32)."""
    attn = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (B, H, N, M)
    if attn_mask is not None:
        attn = attn + attn_mask  # already in q's dtype (sdpa casts it)
    return attn.softmax(dim=-1)


def _blocks(lead: Tuple[int, ...], item_bytes: int) -> List[tuple]:
    """Index tuples over the first one or two of the ``lead`` dims whose blocks hold at most ``_BLOCK_BYTES``
    of temporaries (``item_bytes`` per index of the lead dims; one index if even that is more)."""
    if not lead:
        return [()]
    rest = math.prod(lead[1:]) * item_bytes
    if len(lead) == 1 or rest <= _BLOCK_BYTES:
        step = max(1, _BLOCK_BYTES // max(rest, 1))
        return [(slice(i, i + step),) for i in range(0, lead[0], step)]
    step = max(1, _BLOCK_BYTES // (math.prod(lead[2:]) * item_bytes))
    return [(slice(i, i + 1), slice(j, j + step)) for i in range(lead[0]) for j in range(0, lead[1], step)]


class _RecomputedAttention(torch.autograd.Function):
    """``softmax(q k^T / sqrt(Dh) + mask) v`` that saves only its inputs and recomputes the probabilities in
    backward (the idea of Dao et al., "FlashAttention", arXiv:2205.14135, section 3.1, without the tiling of the
    keys: at most ``_MAX_KEYS`` of them, so whole rows fit).

    Autograd through the explicit matmuls would save the probabilities ``(.., N, M)``; here the saved set is q, k,
    v (views of the qkv projection's output, which is held anyway) and a constant mask, less than flash's output +
    log-sum-exp. The ``(.., N, M)`` temporaries are made one block of the leading dims at a time
    (:func:`_blocks`). Backward, with ``P`` recomputed bit for bit: ``dV = P^T dO``, ``dP = dO V^T``,
    ``dS = P * (dP - rowsum(dP * P))`` (the softmax backward), ``dQ = dS K / sqrt(Dh)``,
    ``dK = dS^T Q / sqrt(Dh)``: the same kernels in the same order as autograd's, so the gradients equal the
    autograd path's.
    """

    @staticmethod
    def forward(ctx, q, k, v, attn_mask):
        ctx.save_for_backward(q, k, v, attn_mask)
        lead = _lead(q, k, v, attn_mask)
        blocks = _blocks(lead, _temp_bytes(q, k, 2))  # S, P
        if len(blocks) == 1:
            return _probs(q, k, attn_mask) @ v  # (.., N, Dh)
        q, k, v, attn_mask = _expand(lead, q, k, v, attn_mask)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (.., N, Dh)
        for idx in blocks:
            out[idx] = _probs(q[idx], k[idx], None if attn_mask is None else attn_mask[idx]) @ v[idx]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q0, k0, v0, mask0 = ctx.saved_tensors
        lead = _lead(q0, k0, v0, mask0)
        blocks = _blocks(lead, _temp_bytes(q0, k0, 3))  # P, dP, dS
        with torch.autocast(q0.device.type, enabled=False):
            grad_out = grad_out.to(q0.dtype)
            if len(blocks) == 1:
                grads = _backward_block(q0, k0, v0, mask0, grad_out)
            else:
                q, k, v, mask = _expand(lead, q0, k0, v0, mask0)
                grad_out = grad_out.expand(*q.shape[:-1], grad_out.shape[-1])
                grads = [t.new_empty(t.shape) for t in (q, k, v)]  # (.., N, Dh), (.., M, Dh) x2
                for idx in blocks:
                    for g, part in zip(grads, _backward_block(q[idx], k[idx], v[idx],
                                                              None if mask is None else mask[idx], grad_out[idx])):
                        g[idx] = part
        return (*(g.sum_to_size(t.shape) for g, t in zip(grads, (q0, k0, v0))), None)


def _lead(q, k, v, attn_mask) -> Tuple[int, ...]:
    """The broadcast leading dims of q, k, v (and the mask)."""
    masks = () if attn_mask is None else (attn_mask.shape[:-2],)
    return tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], *masks))


def _temp_bytes(q, k, copies: int) -> int:
    """Bytes of ``copies`` ``(N, M)`` temporaries per index of the leading dims."""
    return q.shape[-2] * k.shape[-2] * q.element_size() * copies


def _expand(lead: Tuple[int, ...], q, k, v, attn_mask):
    """q, k, v (and the mask) as views over the broadcast leading dims ``lead``."""
    q, k, v = (t.expand(*lead, *t.shape[-2:]) for t in (q, k, v))
    if attn_mask is not None:
        attn_mask = attn_mask.expand(*lead, q.shape[-2], k.shape[-2])
    return q, k, v, attn_mask


def _flat(t: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """``t`` broadcast over ``lead`` and flattened to ``(L, *, *)`` (a copy only where the view cannot fold)."""
    return t.expand(*lead, *t.shape[-2:]).reshape(-1, *t.shape[-2:])


def _backward_block(q, k, v, attn_mask, grad_out) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of one block of :class:`_RecomputedAttention`.

    The products with a transposed ``(N, M)`` operand run as 3-D ``bmm`` on a flattened view, as autograd's
    ``BmmBackward`` does: through a 4-D ``matmul`` the CPU kernel copies the transposed operand first.
    """
    p = _probs(q, k, attn_mask)  # (.., N, M), contiguous
    lead, (N, M) = p.shape[:-2], p.shape[-2:]
    grad_out = grad_out.expand(*lead, N, grad_out.shape[-1])
    grad_v = torch.bmm(p.view(-1, N, M).transpose(1, 2), _flat(grad_out, lead))  # (L, M, Dh)
    grad_s = torch._softmax_backward_data(grad_out @ v.transpose(-2, -1), p, -1, p.dtype)
    del p
    grad_s = grad_s.mul_(q.shape[-1] ** -0.5)  # (.., N, M)
    grad_k = torch.bmm(grad_s.view(-1, N, M).transpose(1, 2), _flat(q, lead))  # (L, M, Dh)
    return (grad_s @ k, grad_k.view(*lead, M, -1), grad_v.view(*lead, M, -1))  # (.., N, Dh), (.., M, Dh) x2


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``softmax(q k^T / sqrt(Dh) + attn_mask) v`` in the inputs' dtype (the softmax accumulates in fp32).

    A mask that needs a gradient (Swin's learned relative-position bias) goes through autograd, which saves the
    probabilities: saving the mask instead would hold a tensor of the same size. There q is scaled before the
    product, as timm's and MONAI's Swin write it, so that neither direction makes an extra pass over the
    ``(B, H, N, M)`` scores (Swin-UNETR 64^3 b1 train step, 2-core EPYC: bf16 1.96 s scaling the scores -> 1.86
    s; fp32 4.52 s on SDPA's math fallback -> 4.45 s; Swin-T level in bf16, 2% faster in fp32). Otherwise
    :class:`_RecomputedAttention` saves nothing but its inputs.
    """
    with torch.autocast(q.device.type, enabled=False):
        if attn_mask is not None and attn_mask.requires_grad:
            attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, M)
            return (attn + attn_mask).softmax(dim=-1) @ v  # (B, H, N, Dh)
        return _RecomputedAttention.apply(q, k, v, attn_mask)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None,
         mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """SDPA with an optional additive ``bias`` and an optional boolean ``mask`` (True = attend).

    Attention over up to ``_MAX_KEYS`` keys in CPU bf16 training runs as explicit matmuls + softmax that
    recompute the probabilities in backward, and CPU training with a mask that needs a gradient as explicit
    matmuls + softmax through autograd (same function; see :func:`_math_is_better`), every other call through
    ``F.scaled_dot_product_attention``.

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

"""Longformer-style attention: a sliding window for every token plus global tokens.

Beltagy, Peters and Cohan, "Longformer: The Long-Document Transformer", arXiv:2004.05150, Sec. 3.1. Token ``i``
attends to the tokens ``j`` with ``|i - j| <= w`` (``w = attention_window // 2``, the one-sided window, as in
HF ``LongformerSelfAttention``) and to every global token; global tokens attend to all tokens and are computed
with a second set of projections (``qkv_global``, the paper's ``Q_g, K_g, V_g``). Here the global tokens are the
leading ``num_global_tokens`` tokens (the CLS token of VTN).

Two formulations, both through ``F.scaled_dot_product_attention`` (no per-head loops):

* ``"dense"``: one ``(N, N)`` band + global boolean mask. ``O(N^2)`` memory; fastest for short sequences (VTN's
  17-token training clips) and the reference the chunked path is tested against.
* ``"chunked"``: the sequence is cut into chunks of ``w`` queries; each chunk attends to the ``3w`` keys of its
  own and both neighbouring chunks (``Tensor.unfold``, a view) plus the ``G`` global keys, with a per-chunk band
  mask. Memory and compute are ``O(N * (3w + G))``, linear in the video length (HF's sliding-chunks computes
  the same ``3w``-wide band per chunk). ``"auto"`` picks dense when ``N <= 2 * (3w + G)``.

Key names: ``qkv`` / ``qkv_global`` / ``proj``; HF Longformer's ``query``/``key``/``value`` and
``query_global``/``key_global``/``value_global`` are fused row-wise (q | k | v) by the VTN converter.
"""

from __future__ import annotations

from typing import Optional, Type

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from backbones.layers.linear import Linear
from backbones.layers.mlp import Mlp

__all__ = ["LocalGlobalAttention", "LocalGlobalBlock", "LocalGlobalEncoder", "local_global_mask"]

MODES = ("auto", "dense", "chunked")


def local_global_mask(n: int, window: int, num_global: int = 1, device: Optional[torch.device] = None) -> torch.Tensor:
    """Dense boolean mask ``(N, N)`` (True = attend) of sliding-window + leading-global attention.

    Args:
        n: Sequence length.
        window: One-sided window ``w``; token ``i`` sees ``j`` with ``|i - j| <= w``.
        num_global: Leading global tokens: their rows and columns are all True.
    """
    idx = torch.arange(n, device=device)
    mask = (idx[:, None] - idx[None, :]).abs() <= window  # (N, N) band
    mask[:num_global, :] = True
    mask[:, :num_global] = True
    return mask


def _neg(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min


class LocalGlobalAttention(nn.Module):
    """Sliding-window self-attention with global tokens (Longformer).

    Args:
        dim: Token width ``C``.
        num_heads: Heads; must divide ``dim``.
        attention_window: Full window (even), ``attention_window // 2`` tokens on each side (HF convention;
            VTN's code uses 18, its paper 32).
        num_global_tokens: Leading tokens with global attention (>= 0).
        qkv_bias: Bias on the projections.
        separate_global_proj: Separate ``qkv_global`` projections for global attention (Longformer); otherwise
            the global rows reuse ``qkv``.
        attn_drop: Attention dropout.
        proj_drop: Dropout after ``proj``.
        mode: ``"auto"``, ``"dense"`` or ``"chunked"`` (see the module docstring).
    """

    def __init__(self, dim: int, num_heads: int = 8, attention_window: int = 18, num_global_tokens: int = 1,
                 qkv_bias: bool = True, separate_global_proj: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, mode: str = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} should be divisible by num_heads {num_heads}")
        if attention_window < 2 or attention_window % 2:
            raise ValueError(f"attention_window must be a positive even number, got {attention_window}")
        if num_global_tokens < 0 or mode not in MODES:
            raise ValueError(f"num_global_tokens must be >= 0 and mode one of {MODES}, got "
                             f"{num_global_tokens}, {mode!r}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.window = attention_window // 2
        self.num_global_tokens = num_global_tokens
        self.mode = mode
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.qkv_global = Linear(dim, 3 * dim, bias=qkv_bias) if separate_global_proj else None
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.reshape(B, N, -1, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (k, B, H, N, Dh)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N, C)``; ``key_padding_mask`` ``(B, N)`` is True at padded tokens."""
        B, N, C = x.shape
        G = min(self.num_global_tokens, N)
        q, k, v = self._heads(self.qkv(x)).unbind(0)  # (B, H, N, Dh) each
        use_dense = self.mode == "dense" or (self.mode == "auto" and N <= 2 * (3 * self.window + G))
        drop = self.attn_drop if self.training else 0.0
        local = self._dense(q, k, v, key_padding_mask, G, drop) if use_dense else \
            self._chunked(q, k, v, key_padding_mask, G, drop)  # (B, H, N, Dh)
        if G:
            local = torch.cat([self._global_rows(x, q, k, v, key_padding_mask, G, drop), local[:, :, G:]], dim=2)
        out = local.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(out))

    def _dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: Optional[torch.Tensor], G: int,
               drop: float) -> torch.Tensor:
        """Local rows via one ``(N, N)`` mask (global rows are recomputed by :meth:`_global_rows`)."""
        N = q.shape[2]
        allowed = local_global_mask(N, self.window, G, q.device)  # (N, N)
        allowed = allowed[None, None] if pad is None else allowed[None, None] & ~pad[:, None, None, :]
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, _neg(q.dtype))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)

    def _chunked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: Optional[torch.Tensor], G: int,
                 drop: float) -> torch.Tensor:
        """Local rows in ``O(N * (3w + G))``: chunks of ``w`` queries against ``3w`` neighbouring + global keys."""
        B, H, N, Dh = q.shape
        w = self.window
        nc = -(-N // w)  # number of chunks
        padn = nc * w - N
        qc = F.pad(q, (0, 0, 0, padn)).reshape(B, H, nc, w, Dh)  # (B, H, nc, w, Dh)
        kc = F.pad(k, (0, 0, w, padn + w)).unfold(2, 3 * w, w).transpose(-1, -2)  # (B, H, nc, 3w, Dh)
        vc = F.pad(v, (0, 0, w, padn + w)).unfold(2, 3 * w, w).transpose(-1, -2)  # (B, H, nc, 3w, Dh)
        qpos = torch.arange(nc * w, device=q.device).reshape(nc, w, 1)  # absolute query index
        kpos = (torch.arange(nc, device=q.device) * w - w).reshape(nc, 1, 1) + torch.arange(3 * w, device=q.device)
        allowed = ((qpos - kpos).abs() <= w) & (kpos >= G) & (kpos < N)  # (nc, w, 3w); global keys come below
        allowed = allowed.expand(B, nc, w, 3 * w)
        if pad is not None:
            padk = F.pad(pad, (w, padn + w), value=True).unfold(1, 3 * w, w)  # (B, nc, 3w)
            allowed = allowed & ~padk[:, :, None, :]
        if G:
            kc = torch.cat([kc, k[:, :, None, :G].expand(B, H, nc, G, Dh)], dim=3)  # (B, H, nc, 3w + G, Dh)
            vc = torch.cat([vc, v[:, :, None, :G].expand(B, H, nc, G, Dh)], dim=3)
            gk = torch.ones(B, nc, w, G, dtype=torch.bool, device=q.device)
            if pad is not None:
                gk = gk & ~pad[:, None, None, :G]
            allowed = torch.cat([allowed, gk], dim=-1)  # (B, nc, w, 3w + G)
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, _neg(q.dtype))
        out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=bias[:, None], dropout_p=drop)  # (B,H,nc,w,Dh)
        return out.reshape(B, H, nc * w, Dh)[:, :, :N]

    def _global_rows(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     pad: Optional[torch.Tensor], G: int, drop: float) -> torch.Tensor:
        """The ``G`` global queries attend to every (unpadded) token: ``(B, H, G, Dh)``."""
        if self.qkv_global is not None:
            C = x.shape[-1]
            W, b = self.qkv_global.weight, self.qkv_global.bias
            q = self._heads(F.linear(x[:, :G], W[:C], None if b is None else b[:C]))[0]  # (B, H, G, Dh)
            k, v = self._heads(F.linear(x, W[C:], None if b is None else b[C:])).unbind(0)  # (B, H, N, Dh)
        else:
            q = q[:, :, :G]
        bias = None
        if pad is not None:
            bias = torch.zeros(pad.shape, dtype=q.dtype, device=q.device).masked_fill(pad, _neg(q.dtype))
            bias = bias[:, None, None, :]  # (B, 1, 1, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)


class LocalGlobalBlock(nn.Module):
    """Post-norm transformer layer (BERT/Longformer layout) around :class:`LocalGlobalAttention`.

    ``x = norm1(x + drop(attn(x)))``; ``x = norm2(x + drop(mlp(x)))``, as HF ``LongformerLayer``.

    Args:
        dim: Token width.
        num_heads: Heads.
        mlp_hidden: MLP hidden width (3072 for VTN).
        attention_window: Full attention window (see :class:`LocalGlobalAttention`).
        num_global_tokens: Leading global tokens.
        proj_drop: Dropout after attention and MLP (HF ``hidden_dropout_prob``).
        attn_drop: Attention dropout (HF ``attention_probs_dropout_prob``).
        act_layer: MLP activation.
        norm_layer: Norm class (HF Longformer: ``LayerNorm(eps=1e-12)``... VTN keeps that default).
        attn_layer: Attention class.
        mlp_layer: MLP class, called as ``mlp_layer(dim, mlp_hidden, act_layer=, drop=0)``.
        attn_mode: ``"auto"``, ``"dense"`` or ``"chunked"``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, attention_window: int = 18,
                 num_global_tokens: int = 1, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 act_layer: Type[nn.Module] = nn.GELU, norm_layer: Type[nn.Module] = nn.LayerNorm,
                 attn_layer: Type[nn.Module] = LocalGlobalAttention, mlp_layer: Type[nn.Module] = Mlp,
                 attn_mode: str = "auto") -> None:
        super().__init__()
        self.attn = attn_layer(dim, num_heads, attention_window, num_global_tokens, attn_drop=attn_drop,
                               proj_drop=proj_drop, mode=attn_mode)
        self.norm1 = norm_layer(dim)
        self.mlp = mlp_layer(dim, mlp_hidden, act_layer=act_layer, drop=0.0)
        self.drop2 = nn.Dropout(proj_drop)
        self.norm2 = norm_layer(dim)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N, C)``."""
        x = self.norm1(x + self.attn(x, key_padding_mask))
        return self.norm2(x + self.drop2(self.mlp(x)))


class LocalGlobalEncoder(nn.Module):
    """A stack of :class:`LocalGlobalBlock` (VTN's temporal encoder without its embeddings).

    Args:
        dim: Token width.
        depth: Layers.
        num_heads: Heads.
        attention_window: Full window per layer.
        mlp_hidden: MLP width (default ``4 * dim``).
        num_global_tokens: Leading global tokens.
        proj_drop: Hidden dropout.
        attn_drop: Attention dropout.
        norm_layer: Norm class.
        attn_mode: ``"auto"``, ``"dense"`` or ``"chunked"``.
    """

    def __init__(self, dim: int, depth: int = 3, num_heads: int = 12, attention_window: int = 18,
                 mlp_hidden: Optional[int] = None, num_global_tokens: int = 1, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, norm_layer: Type[nn.Module] = nn.LayerNorm, attn_mode: str = "auto") -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList([
            LocalGlobalBlock(dim, num_heads, mlp_hidden or 4 * dim, attention_window, num_global_tokens, proj_drop,
                             attn_drop, norm_layer=norm_layer, attn_mode=attn_mode) for _ in range(depth)])

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N, C)``."""
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, key_padding_mask, use_reentrant=False)
            else:
                x = blk(x, key_padding_mask)
        return x

"""ViViT factorised self-attention (model 3) and factorised dot-product attention (model 4).

Arnab, Dehghani, Heigold, Sun, Lucic and Schmid, "ViViT: A Video Vision Transformer", arXiv:2103.15691, Sec. 3.3.
Tokens are ``(B, T*N, C)`` in ``(t, h, w)`` order with no class token (the paper and scenic use global average
pooling for these two models); the grid ``thw = (T, H, W)`` is passed explicitly. All attention is SDPA.
"""

from __future__ import annotations

from typing import Optional, Sequence, Type

import torch
from torch import nn

from backbones.layers.attention import Attention, sdpa
from backbones.layers.block import Block
from backbones.layers.divided_st_attention import fold_time, split_prefix, unfold_time
from backbones.layers.drop import LayerScale
from backbones.layers.mlp import Mlp

__all__ = ["FactorisedSelfAttentionBlock", "FactorisedDotProductAttention", "FactorisedDotProductBlock"]

_ORDERS = ("space_time", "time_space")


def _no_prefix(x: torch.Tensor, thw: Sequence[int]) -> None:
    if split_prefix(x, thw)[0].shape[1]:
        raise ValueError(f"factorised ViViT blocks take no class token: got {x.shape[1]} tokens for thw={tuple(thw)}")


class FactorisedSelfAttentionBlock(Block):
    """ViViT model 3: spatial self-attention, then temporal self-attention, then the MLP, in every block.

    ``norm1``/``attn`` (spatial) keep timm's names so an image ViT initialises them directly; the temporal step
    adds ``temporal_norm1``/``temporal_attn`` (initialised from the spatial weights when loading an image ViT, as
    scenic's ``init_encoderblock``). Each step is a pre-norm residual; stochastic depth drops whole clips.

    Args:
        dim: Token width ``C``.
        num_heads: Heads of each attention.
        attention_order: ``"space_time"`` (the paper's description, default) or ``"time_space"``.
        mlp_ratio, qkv_bias, qk_norm, proj_drop, attn_drop, init_values, drop_path, act_layer, norm_layer,
            attn_layer, mlp_layer: As :class:`~backbones.layers.Block`.

    Example::

        >>> blk = FactorisedSelfAttentionBlock(64, num_heads=4)
        >>> blk(torch.randn(2, 4 * 3 * 3, 64), thw=(4, 3, 3)).shape
        torch.Size([2, 36, 64])
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 init_values: Optional[float] = None, drop_path: float = 0.0, act_layer: Type[nn.Module] = nn.GELU,
                 norm_layer: Type[nn.Module] = nn.LayerNorm, attn_layer: Type[nn.Module] = Attention,
                 mlp_layer: Type[nn.Module] = Mlp, attention_order: str = "space_time") -> None:
        super().__init__(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm, proj_drop=proj_drop,
                         attn_drop=attn_drop, init_values=init_values, drop_path=drop_path, act_layer=act_layer,
                         norm_layer=norm_layer, attn_layer=attn_layer, mlp_layer=mlp_layer)
        if attention_order not in _ORDERS:
            raise ValueError(f"attention_order must be one of {_ORDERS}, got {attention_order!r}")
        self.attention_order = attention_order
        self.temporal_norm1 = norm_layer(dim)
        self.temporal_attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm,
                                        attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer)
        self.temporal_ls = LayerScale(dim, init_values) if init_values else nn.Identity()

    def _space(self, x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:
        T, H, W = thw
        B, L, C = x.shape
        y = self.attn(self.norm1(x.reshape(B * T, H * W, C)))  # (B*T, N, C): attention within each frame
        return x + self.drop_path1(self.ls1(y.reshape(B, L, C)))

    def _time(self, x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:
        y = self.temporal_attn(self.temporal_norm1(fold_time(x, thw)))  # (B*N, T, C): attention along time
        return x + self.drop_path1(self.temporal_ls(unfold_time(y, thw)))

    def forward(self, x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        """``(B, T*N, C)`` -> ``(B, T*N, C)``."""
        _no_prefix(x, thw)
        steps = (self._space, self._time) if self.attention_order == "space_time" else (self._time, self._space)
        for step in steps:
            x = step(x, thw)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class FactorisedDotProductAttention(Attention):
    """ViViT model 4: half of the heads attend over time, the other half over space; outputs are concatenated.

    One fused ``qkv`` and one ``proj`` as :class:`~backbones.layers.Attention` (same parameters as joint attention,
    so model 1 / image-ViT weights load unchanged). Head order follows scenic's
    ``factorized_dot_product_attention``: heads ``[0, H/2)`` attend along time, heads ``[H/2, H)`` along space.

    Args:
        dim: Token width ``C``.
        num_heads: Number of heads; must be even and divide ``dim``.
        **kwargs: As :class:`~backbones.layers.Attention`.
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
        if num_heads % 2:
            raise ValueError(f"factorised dot-product attention needs an even num_heads, got {num_heads}")
        super().__init__(dim, num_heads=num_heads, **kwargs)

    def forward(self, x: torch.Tensor, thw: Sequence[int], attn_bias: Optional[torch.Tensor] = None,  # type: ignore
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, T*N, C)`` -> ``(B, T*N, C)``; ``attn_bias``/``attn_mask`` are not supported."""
        if attn_bias is not None or attn_mask is not None:
            raise ValueError("factorised dot-product attention takes no attn_bias / attn_mask")
        T, H, W = thw
        B, L, C = x.shape
        Hh, N, Dh = self.num_heads // 2, H * W, self.head_dim
        p = self.attn_drop if self.training else 0.0
        q, k, v = (t.reshape(B, 2, Hh, T, N, Dh) for t in self.split_heads(x))  # (B, 2, H/2, T, N, Dh)
        qt, kt, vt = (t[:, 0].transpose(2, 3).reshape(B, Hh * N, T, Dh) for t in (q, k, v))  # along time
        qs, ks, vs = (t[:, 1].reshape(B, Hh * T, N, Dh) for t in (q, k, v))  # along space
        out_t = sdpa(qt, kt, vt, dropout_p=p).reshape(B, Hh, N, T, Dh).transpose(2, 3)  # (B, H/2, T, N, Dh)
        out_s = sdpa(qs, ks, vs, dropout_p=p).reshape(B, Hh, T, N, Dh)  # (B, H/2, T, N, Dh)
        x = torch.cat([out_t, out_s], dim=1).permute(0, 2, 3, 1, 4).reshape(B, L, C)  # (B, T*N, C)
        return self.proj_drop(self.proj(x))


class FactorisedDotProductBlock(Block):
    """Pre-norm block whose attention is :class:`FactorisedDotProductAttention` (ViViT model 4).

    Same parameters and key names as :class:`~backbones.layers.Block`; only the attention pattern differs.
    Arguments as :class:`~backbones.layers.Block` (``attn_layer`` defaults to the factorised dot-product one).
    """

    def __init__(self, dim: int, num_heads: int, attn_layer: Type[nn.Module] = FactorisedDotProductAttention,
                 **kwargs) -> None:
        super().__init__(dim, num_heads, attn_layer=attn_layer, **kwargs)

    def forward(self, x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        """``(B, T*N, C)`` -> ``(B, T*N, C)``."""
        _no_prefix(x, thw)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), thw)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

"""Pre-norm transformer block with injected attention/MLP/norm classes.

Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929. Key names follow timm
(``norm1``, ``attn``, ``ls1``, ``norm2``, ``mlp``, ``ls2``). Video blocks (divided space-time, factorised)
reuse this class by passing another ``attn_layer`` or subclass it, never by copying it.
"""

from __future__ import annotations

from typing import Optional, Type

import torch
from torch import nn

from backbones.layers.attention import Attention
from backbones.layers.drop import DropPath, LayerScale
from backbones.layers.mlp import Mlp

__all__ = ["Block"]


class Block(nn.Module):
    """``x + DropPath(LS(Attn(LN(x))))`` then ``x + DropPath(LS(MLP(LN(x))))``.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: Hidden width of the MLP as a multiple of ``dim``.
        qkv_bias: Bias on qkv.
        qk_norm: Normalise q and k.
        proj_drop: Dropout after attention/MLP projections.
        attn_drop: Attention dropout.
        init_values: LayerScale init; ``None`` disables LayerScale.
        drop_path: Stochastic depth of both branches.
        act_layer: MLP activation class.
        norm_layer: Norm class (e.g. ``partial(nn.LayerNorm, eps=1e-6)``).
        attn_layer: Attention class, called as ``attn_layer(dim, num_heads=, qkv_bias=, qk_norm=, attn_drop=,
            proj_drop=, norm_layer=)``.
        mlp_layer: MLP class, called as ``mlp_layer(dim, hidden, act_layer=, drop=)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 init_values: Optional[float] = None, drop_path: float = 0.0, act_layer: Type[nn.Module] = nn.GELU,
                 norm_layer: Type[nn.Module] = nn.LayerNorm, attn_layer: Type[nn.Module] = Attention,
                 mlp_layer: Type[nn.Module] = Mlp) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
                               proj_drop=proj_drop, norm_layer=norm_layer)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N, C)``."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_bias=attn_bias, attn_mask=attn_mask)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x

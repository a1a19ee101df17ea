"""Space-time transformer blocks for video tokens: TimeSformer divided attention and joint attention.

Bertasius, Wang and Torresani, "Is Space-Time Attention All You Need for Video Understanding?", arXiv:2102.05095.
Tokens are ``(B, [1 +] T*N, C)`` in ``(t, h, w)`` order (time slowest), an optional class token first; every block
takes the token grid ``thw = (T, H, W)`` explicitly. Key names are those of the official TimeSformer
(``temporal_norm1``, ``temporal_attn.{qkv,proj}``, ``temporal_fc`` next to timm's ``norm1``/``attn``/``norm2``/``mlp``),
so official checkpoints and timm ImageNet ViTs map one to one.
"""

from __future__ import annotations

from typing import Optional, Sequence, Type

import torch
from torch import nn

from backbones.layers.attention import Attention
from backbones.layers.block import Block
from backbones.layers.mlp import Mlp

__all__ = ["SpaceTimeBlock", "DividedSpaceTimeBlock", "fold_time", "unfold_time", "split_prefix"]


def fold_time(x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:
    """``(B, T*N, C)`` in ``(t, n)`` order -> ``(B*N, T, C)``: one temporal sequence per spatial location."""
    T, H, W = thw
    B, L, C = x.shape
    return x.reshape(B, T, H * W, C).transpose(1, 2).reshape(B * H * W, T, C)


def unfold_time(x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`fold_time`: ``(B*N, T, C)`` -> ``(B, T*N, C)``."""
    T, H, W = thw
    BN, _, C = x.shape
    return x.reshape(BN // (H * W), H * W, T, C).transpose(1, 2).reshape(BN // (H * W), T * H * W, C)


def split_prefix(x: torch.Tensor, thw: Sequence[int]) -> tuple:
    """Split ``(B, P + T*N, C)`` into the prefix ``(B, P, C)`` (``P`` is 0 or 1) and the grid tokens."""
    T, H, W = thw
    P = x.shape[1] - T * H * W
    if P not in (0, 1):
        raise ValueError(f"expected T*H*W = {T * H * W} tokens (+1 class token), got {x.shape[1]} for thw={tuple(thw)}")
    return x[:, :P], x[:, P:]


class SpaceTimeBlock(Block):
    """Joint space-time attention: a plain pre-norm :class:`~backbones.layers.Block` over all ``[1 +] T*N`` tokens.

    TimeSformer's ``joint_space_time`` and ViViT model 1 (Arnab et al., arXiv:2103.15691). It only adds the
    ``thw`` argument so every video block is called the same way, ``blk(x, thw)``; the grid is not used.
    """

    def forward(self, x: torch.Tensor, thw: Optional[Sequence[int]] = None) -> torch.Tensor:  # type: ignore[override]
        """``(B, L, C)`` -> ``(B, L, C)``."""
        return super().forward(x)


class DividedSpaceTimeBlock(Block):
    """TimeSformer divided space-time block: temporal attention, then spatial attention, then the MLP.

    Exactly the official ``Block(attention_type='divided_space_time')``:

    1. temporal: each spatial location attends over its ``T`` frames, ``x + temporal_fc(attn_t(norm_t(x)))``;
       the class token skips this step;
    2. spatial: each frame attends over its ``N`` patches plus a copy of the class token; the class token's
       update is the average of its ``T`` per-frame updates;
    3. MLP on all tokens.

    ``temporal_fc`` is zero-initialised (the official ``VisionTransformer.__init__`` does this for every block),
    so a freshly built block is spatial attention + MLP until it learns temporal mixing. Stochastic depth drops
    whole clips (the official code drops per folded ``(b h w)`` / ``(b t)`` row, an artefact of where it applies it).

    Args:
        dim: Token width ``C``.
        num_heads: Heads of both the temporal and the spatial attention.
        mlp_ratio, qkv_bias, qk_norm, proj_drop, attn_drop, init_values, drop_path, act_layer, norm_layer,
            attn_layer, mlp_layer: As :class:`~backbones.layers.Block`; ``attn_layer`` and ``norm_layer`` also
            build the temporal attention and its norm.

    Example::

        >>> blk = DividedSpaceTimeBlock(64, num_heads=4)
        >>> x = torch.randn(2, 1 + 4 * 3 * 3, 64)        # class token + T=4 frames of 3x3 patches
        >>> blk(x, thw=(4, 3, 3)).shape
        torch.Size([2, 37, 64])
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 init_values: Optional[float] = None, drop_path: float = 0.0, act_layer: Type[nn.Module] = nn.GELU,
                 norm_layer: Type[nn.Module] = nn.LayerNorm, attn_layer: Type[nn.Module] = Attention,
                 mlp_layer: Type[nn.Module] = Mlp) -> None:
        super().__init__(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm, proj_drop=proj_drop,
                         attn_drop=attn_drop, init_values=init_values, drop_path=drop_path, act_layer=act_layer,
                         norm_layer=norm_layer, attn_layer=attn_layer, mlp_layer=mlp_layer)
        self.temporal_norm1 = norm_layer(dim)
        self.temporal_attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm,
                                        attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer)
        self.temporal_fc = nn.Linear(dim, dim)
        nn.init.zeros_(self.temporal_fc.weight)
        nn.init.zeros_(self.temporal_fc.bias)

    def _temporal(self, x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:
        """Grid tokens after the temporal step, ``(B, T*N, C)`` -> ``(B, T, N, C)`` (contiguous).

        ``temporal_fc`` and stochastic depth run in the folded ``(B*N, T, C)`` layout (both act per token / per
        clip), so the way back to ``(t, n)`` order is the residual add itself, with no separate unfold copy.
        """
        T, H, W = thw
        B, _, C = x.shape
        y = self.temporal_attn(self.temporal_norm1(fold_time(x, thw)))  # (B*N, T, C)
        y = self.temporal_fc(self.drop_path1(y.view(B, H * W, T, C)).view(B * H * W, T, C))  # (B*N, T, C)
        return x.view(B, T, H * W, C) + y.view(B, H * W, T, C).transpose(1, 2)  # (B, T, N, C)

    def _spatial(self, cls: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """Tokens after the spatial step: prefix ``cls`` ``(B, P, C)`` and grid ``xt`` ``(B, T, N, C)`` ->
        ``(B, P + T*N, C)``.

        The class token's residual is the mean of its ``T`` per-frame updates; the grid's residual is added
        straight from the attention output's ``[:, :, P:]`` slice, so the only copies are the per-frame class
        token concatenation in and the one concatenation out.
        """
        B, T, N, C = xt.shape
        P = cls.shape[1]
        y = xt.view(B * T, N, C)  # (B*T, N, C)
        if P:
            y = torch.cat([cls.expand(B, T, C).reshape(B * T, 1, C), y], dim=1)  # (B*T, 1+N, C)
        y = self.attn(self.norm1(y)).view(B, T, P + N, C)  # (B, T, P+N, C)
        keep = self._keep(B, y)
        res = self.ls1(y[:, :, P:])  # (B, T, N, C), a strided view
        out = xt + (res if keep is None else res * keep)  # (B, T, N, C)
        if not P:
            return out.view(B, T * N, C)
        res_cls = self.ls1(y[:, :, 0].mean(dim=1, keepdim=True))  # (B, 1, C): mean over frames
        cls = cls + (res_cls if keep is None else res_cls * keep.view(B, 1, 1))
        return torch.cat([cls, out.view(B, T * N, C)], dim=1)  # (B, 1 + T*N, C)

    def _keep(self, B: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """Stochastic depth of the spatial residual as a per-clip factor ``(B, 1, 1, 1)`` shared by the class
        token and the grid (the same draw ``drop_path1`` makes on the whole residual); ``None`` when inactive."""
        if isinstance(self.drop_path1, nn.Identity) or not self.training:
            return None
        return self.drop_path1(like.new_ones(B, 1, 1, 1, dtype=torch.float32))

    def forward(self, x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        """``(B, [1 +] T*N, C)`` -> same shape; ``thw`` is the token grid ``(T, H, W)``."""
        cls, xt = split_prefix(x, thw)  # (B, P, C), (B, T*N, C)
        x = self._spatial(cls, self._temporal(xt, thw))  # (B, P + T*N, C)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

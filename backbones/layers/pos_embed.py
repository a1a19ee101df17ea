"""Position embeddings: fixed sin-cos tables in 1D/2D/3D and resampling of learned tables.

Sin-cos: Vaswani et al., arXiv:1706.03762; 2D/3D variants as in MAE (He et al., arXiv:2111.06377) and MONAI.
Resampling a learned table to a new grid follows timm's ``resample_abs_pos_embed`` (bicubic in 2D,
trilinear in 3D, linear in time).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["sincos_1d", "sincos_nd", "resample_pos_embed", "resample_time_embed", "grid_shape"]


def sincos_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(N,)`` positions -> ``(N, dim)`` with ``[sin | cos]`` halves."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    out = positions.double()[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_nd(grid: Sequence[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sin-cos table for a 1D/2D/3D grid, channels split evenly across axes.

    Args:
        grid: Token grid, e.g. ``(14, 14)`` or ``(8, 14, 14)``.
        dim: Embedding width; must be divisible by ``2 * len(grid)``.

    Returns:
        ``(1, prod(grid), dim)`` in row-major (last axis fastest) token order.
    """
    n = len(grid)
    if dim % (2 * n):
        raise ValueError(f"embed dim {dim} must be divisible by {2 * n} for a {n}D sin-cos embedding")
    axes = torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")
    parts = [sincos_1d(a.flatten(), dim // n, temperature) for a in axes]  # n x (N, dim/n)
    return torch.cat(parts, dim=1)[None]


def resample_pos_embed(pos: torch.Tensor, new_grid: Sequence[int], old_grid: Sequence[int],
                       num_prefix_tokens: int = 1, antialias: bool = False) -> torch.Tensor:
    """Resample a learned table ``(1, P + prod(old_grid), C)`` to ``new_grid``; prefix tokens are kept.

    Uses bicubic interpolation for 2D grids and trilinear for 3D, with ``align_corners=False`` as timm.
    ``antialias=True`` (2D only) reproduces timm's ``resample_abs_pos_embed`` default exactly.
    """
    new_grid, old_grid = tuple(new_grid), tuple(old_grid)
    if new_grid == old_grid:
        return pos
    prefix, grid_tokens = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    C = pos.shape[-1]
    if grid_tokens.shape[1] != math.prod(old_grid):
        raise ValueError(f"position table has {grid_tokens.shape[1]} grid tokens, not {old_grid}")
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(old_grid)]
    x = grid_tokens.reshape(1, *old_grid, C).movedim(-1, 1).float()  # (1, C, *old)
    x = F.interpolate(x, size=new_grid, mode=mode, align_corners=False, antialias=antialias and len(old_grid) == 2)
    x = x.movedim(1, -1).reshape(1, -1, C).to(pos.dtype)  # (1, prod(new), C)
    return torch.cat([prefix, x], dim=1)


def resample_time_embed(time_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resample a temporal table ``(1, T, C)`` to ``(1, num_frames, C)`` by linear interpolation."""
    if time_embed.shape[1] == num_frames:
        return time_embed
    x = time_embed.transpose(1, 2)  # (1, C, T)
    x = F.interpolate(x.float(), size=num_frames, mode="linear", align_corners=False)
    return x.transpose(1, 2).to(time_embed.dtype)


def grid_shape(num_tokens: int, ndim: int) -> Tuple[int, ...]:
    """Infer a cubic/square grid from a token count (for tables saved without their grid)."""
    side = round(num_tokens ** (1.0 / ndim))
    if side ** ndim != num_tokens:
        raise ValueError(f"cannot infer a {ndim}D square grid from {num_tokens} tokens")
    return (side,) * ndim

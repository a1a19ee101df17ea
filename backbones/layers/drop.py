"""Stochastic depth and LayerScale.

DropPath: Huang et al., "Deep Networks with Stochastic Depth", arXiv:1603.09382.
LayerScale: Touvron et al., "Going deeper with Image Transformers" (CaiT), arXiv:2103.17239.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "LayerScale", "drop_path"]


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Drop whole samples of a residual branch with probability ``p`` and rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, ..., 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth per sample.

    Args:
        drop_prob: Probability of dropping the branch for a sample, in ``[0, 1)``.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerScale(nn.Module):
    """Per-channel learnable scale ``gamma`` (timm key name).

    Args:
        dim: Channel count.
        init_values: Initial value of every entry of ``gamma``.
    """

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

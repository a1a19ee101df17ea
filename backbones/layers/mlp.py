"""Transformer MLP (timm key names ``fc1``/``fc2``)."""

from __future__ import annotations

from typing import Optional, Type

import torch
from torch import nn

from backbones.layers.linear import Linear

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Two-layer MLP: ``fc1 -> act -> drop -> norm -> fc2 -> drop``.

    Args:
        in_features: Input width.
        hidden_features: Hidden width (default ``in_features``).
        out_features: Output width (default ``in_features``).
        act_layer: Activation class (``nn.GELU``).
        norm_layer: Optional norm after the activation (NormFormer style); ``None`` for none.
        bias: Bias on both linears.
        drop: Dropout after the activation and after ``fc2``.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 act_layer: Type[nn.Module] = nn.GELU, norm_layer: Optional[Type[nn.Module]] = None,
                 bias: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))

"""Weight-standardised convolutions (TF "SAME" or PyTorch symmetric padding), GroupNorm+activation, SAME pooling.

Weight standardisation: Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization", arXiv:1903.10520; used with GroupNorm in BiT (Kolesnikov et al., arXiv:1912.11370) and in the
R50 of the R50+ViT hybrid (Dosovitskiy et al., arXiv:2010.11929). SAME padding reproduces the JAX models and
timm's ``StdConv2dSame``/``MaxPool2dSame`` exactly, so Google and timm weights give identical outputs.
:class:`StdConv2d` is the PyTorch-padded variant of the official TransUNet code (Chen et al., arXiv:2102.04306,
``networks/vit_seg_modeling_resnet_skip.py``).
"""

from __future__ import annotations

import math
from typing import Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StdConv2dSame", "StdConv2d", "GroupNormAct", "MaxPool2dSame", "same_pad", "standardise_weight"]


def same_pad(x: torch.Tensor, kernel: Tuple[int, int], stride: Tuple[int, int], value: float = 0.0) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` so a ``kernel``/``stride`` window gives ``ceil(size / stride)`` outputs (TF SAME)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[-2:]), reversed(kernel), reversed(stride)):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]  # (left, right) then (top, bottom)
    return F.pad(x, pads, value=value) if any(pads) else x


def standardise_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``(O, I, k, k)`` kernel with zero mean and unit (biased) variance per output channel:
    ``(w - mean) / sqrt(var + eps)``."""
    O = weight.shape[0]
    return F.batch_norm(weight.reshape(1, O, -1), None, None, training=True, momentum=0.0,
                        eps=eps).reshape_as(weight)


class StdConv2dSame(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel (zero mean, unit variance) at every call.

    Args:
        in_chans: Input channels.
        out_chans: Output channels.
        kernel_size: Square kernel size.
        stride: Stride; strided convolutions pad dynamically (TF SAME), stride 1 pads ``(k - 1) // 2``.
        bias: Convolution bias.
        eps: Variance epsilon of the standardisation (1e-8 in timm's hybrid ViT).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, bias: bool = False,
                 eps: float = 1e-8) -> None:
        static = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_chans, out_chans, kernel_size, stride=stride, padding=(kernel_size - 1) // 2 if static
                         else 0, bias=bias)
        self.same_pad = not static
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            x = same_pad(x, self.kernel_size, self.stride)
        w = standardise_weight(self.weight, self.eps)  # (O, I, k, k)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StdConv2d(nn.Conv2d):
    """Weight-standardised Conv2d with PyTorch's symmetric zero padding ``kernel_size // 2`` (3 for 7x7, 1 for 3x3,
    0 for 1x1) at every stride: the ``StdConv2d`` of the official TransUNet code.

    Args:
        in_chans: Input channels.
        out_chans: Output channels.
        kernel_size: Square kernel size.
        stride: Stride.
        bias: Convolution bias.
        eps: Variance epsilon of the standardisation (1e-5 in TransUNet).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, bias: bool = False,
                 eps: float = 1e-5) -> None:
        super().__init__(in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = standardise_weight(self.weight, self.eps)  # (O, I, k, k)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm followed by an activation (keys ``weight``/``bias`` as ``nn.GroupNorm``).

    Args:
        num_channels: Channels.
        num_groups: Groups (32 in BiT).
        eps: GroupNorm epsilon.
        apply_act: Apply ``act_layer`` after normalising.
        act_layer: Activation class.
    """

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, apply_act: bool = True,
                 act_layer: Type[nn.Module] = nn.ReLU) -> None:
        if num_channels % num_groups:
            raise ValueError(f"num_channels {num_channels} should be divisible by num_groups {num_groups}")
        super().__init__(num_groups, num_channels, eps=eps)
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class MaxPool2dSame(nn.MaxPool2d):
    """Max pooling with TF SAME padding (padded with ``-inf``)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__(kernel_size, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = (self.kernel_size,) * 2, (self.stride,) * 2
        return F.max_pool2d(same_pad(x, k, s, value=float("-inf")), k, s)

"""Axial-attention ResNet encoders (the encoders of MedT).

Axial attention: Wang et al., "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation",
arXiv:2003.07853. Gated axial attention and the encoder layout (conv stem, bottleneck blocks whose 3x3 conv is
replaced by height then width axial attention, width multiplier ``s = 0.125``, layers ``[1, 2, 4, 1]``):
Valanarasu et al., "Medical Transformer: Gated Axial-Attention for Medical Image Segmentation", arXiv:2102.10662.

Dataflow::

    x (B, C_in, H, W)
    stem: conv7x7/2 - BN - ReLU - conv3x3 - BN - ReLU - conv3x3 - BN - ReLU      (B, 64s, H/2, W/2)
    stages[0..n-1]: AxialBlock x layers[i] (stride 2 from stage 1 on)           (B, 256s * 2^i, H/2^(i+1), ...)
    head: global average pool - Linear                                          (B, num_classes)

The relative-position span of each attention layer comes from ``img_size`` at construction; other input sizes
work (shorter axes use the centre of the tables, longer ones resample them), see
:mod:`backbones.layers.axial_attention`.

Example::

    >>> from backbones import create_model
    >>> enc = create_model("gated_axial_tiny", img_size=64, num_classes=2)
    >>> feats = enc.forward_intermediates(torch.randn(1, 3, 64, 64), indices=2, intermediates_only=True)  # last 2
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from backbones import register_model
from backbones._builder import build_model, checkpoint_module, take_indices
from backbones.layers.axial_attention import AxialAttention
from backbones.layers.drop import DropPath
from engine.choices import check_choice

__all__ = ["AxialBlock", "AxialEncoder", "gated_axial_tiny", "axial_tiny", "axial_nopos_tiny"]


class AxialBlock(nn.Module):
    """Bottleneck block with height then width axial attention in place of the 3x3 conv (expansion 2).

    ``conv_down(1x1) - norm - act - height attention - width attention (stride) - act - conv_up(1x1) - norm``,
    added to the (projected) input, then ``act``.

    Args:
        in_chans: Input channels.
        planes: Bottleneck width; the output has ``planes * expansion`` channels.
        stride: Spatial stride, applied by the width attention (average pool after attention).
        span: Axis length the relative tables are built for (input side of this block).
        num_heads: Attention heads.
        attn_layer: Attention class called as ``attn_layer(dim, dim, num_heads=, axis=, span=, stride=)``, e.g.
            ``partial(AxialAttention, gated=True)``.
        norm_layer: 2D norm class.
        act_layer: Activation class.
        drop_path: Stochastic depth of the residual branch.
    """

    expansion = 2

    def __init__(self, in_chans: int, planes: int, stride: int = 1, span: Optional[int] = None, num_heads: int = 8,
                 attn_layer: Type[nn.Module] = AxialAttention, norm_layer: Type[nn.Module] = nn.BatchNorm2d,
                 act_layer: Type[nn.Module] = nn.ReLU, drop_path: float = 0.0) -> None:
        super().__init__()
        out_chans = planes * self.expansion
        self.conv_down = nn.Conv2d(in_chans, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.height_block = attn_layer(planes, planes, num_heads=num_heads, axis="height", span=span)
        self.width_block = attn_layer(planes, planes, num_heads=num_heads, axis="width", span=span, stride=stride)
        self.conv_up = nn.Conv2d(planes, out_chans, kernel_size=1, bias=False)
        self.bn2 = norm_layer(out_chans)
        self.act = act_layer()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample = None
        if stride != 1 or in_chans != out_chans:
            self.downsample = nn.Sequential(nn.Conv2d(in_chans, out_chans, kernel_size=1, stride=stride, bias=False),
                                            norm_layer(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, 2 * planes, H / stride, W / stride)``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv_down(x)))
        x = self.act(self.width_block(self.height_block(x)))
        x = self.bn2(self.conv_up(x))
        return self.act(self.drop_path(x) + shortcut)


class _Stem(nn.Module):
    """MedT stem: ``conv7x7/2 (C_in -> w) - conv3x3 (w -> hidden) - conv3x3 (hidden -> w)``, each with norm + act."""

    def __init__(self, in_chans: int, width: int, hidden: int, norm_layer: Type[nn.Module],
                 act_layer: Type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, hidden, kernel_size=3, padding=1, bias=False)
        self.bn2 = norm_layer(hidden)
        self.conv3 = nn.Conv2d(hidden, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = norm_layer(width)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))  # (B, w, H/2, W/2)
        x = self.act(self.bn2(self.conv2(x)))  # (B, hidden, H/2, W/2)
        return self.act(self.bn3(self.conv3(x)))  # (B, w, H/2, W/2)


class AxialEncoder(nn.Module):
    """Axial-attention ResNet (MedT's encoder; gated or plain attention, with or without relative encodings).

    Args:
        img_size: Input size the relative tables are built for (other sizes also run).
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 for no head (``forward_head`` returns pooled features).
        layers: Blocks per stage; ``len(layers)`` stages, stride 2 from the second stage on.
        width: Width multiplier ``s`` (stem ``64s``, stage ``i`` bottleneck ``128s * 2^i``).
        stem_hidden: Channels of the middle stem conv (128 in MedT, not scaled by ``s``).
        stem_width: Stem output channels (default ``64s``; MedT's local branch: 64, see :mod:`medvit.nets.medt`).
        num_heads: Attention heads per axial layer.
        rel_pos: Relative encodings for q, k and v.
        gated: Learnable gates (MedT); needs ``rel_pos``.
        attn_layer: Attention class (default :class:`AxialAttention` with ``rel_pos``/``gated`` bound).
        block_fn: Block class.
        norm_layer: 2D norm class.
        act_layer: Activation class.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, increasing linearly over the blocks.
    """

    def __init__(self, img_size: int = 128, in_chans: int = 3, num_classes: int = 1000,
                 layers: Sequence[int] = (1, 2, 4, 1), width: float = 0.125, stem_hidden: int = 128,
                 stem_width: Optional[int] = None, num_heads: int = 8, rel_pos: bool = True, gated: bool = True,
                 attn_layer: Optional[Type[nn.Module]] = None, block_fn: Type[nn.Module] = AxialBlock,
                 norm_layer: Type[nn.Module] = nn.BatchNorm2d, act_layer: Type[nn.Module] = nn.ReLU,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if not layers or any(n < 1 for n in layers):
            raise ValueError(f"layers must be a non-empty list of positive block counts, got {tuple(layers)}")
        if img_size < 2 ** len(layers):
            raise ValueError(f"img_size {img_size} is too small for {len(layers)} stages")
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        self.grad_checkpointing = False
        attn_layer = attn_layer or partial(AxialAttention, rel_pos=rel_pos, gated=gated)
        stem_width = stem_width or int(64 * width)
        self.stem = _Stem(in_chans, stem_width, stem_hidden, norm_layer, act_layer)
        n = sum(layers)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear 0 -> rate (meta-device safe)
        self.stages, self.feature_info = self._make_stages(stem_width, layers, width, num_heads, block_fn, dpr,
                                                           dict(attn_layer=attn_layer, norm_layer=norm_layer,
                                                                act_layer=act_layer))
        self.num_features = self.feature_info[-1]["num_chs"]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = dict(input_size=(in_chans, img_size, img_size), first_conv="stem.conv1",
                                   classifier="head", mean=(0.0,) * in_chans, std=(1.0,) * in_chans)

    def _make_stages(self, in_chans: int, layers: Sequence[int], width: float, num_heads: int,
                     block_fn: Type[nn.Module], dpr: List[float],
                     block_kwargs: Dict[str, Any]) -> Tuple[nn.ModuleList, List[Dict]]:
        """Stages of ``block_fn``; the span halves after every strided block (MedT's ``kernel_size``)."""
        stages, info = nn.ModuleList(), []
        span, reduction = self.img_size // 2, 2
        for i, depth in enumerate(layers):
            planes = int(128 * width) * 2 ** i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block_fn(in_chans, planes, stride=stride if j == 0 else 1, span=span,
                                       num_heads=num_heads, drop_path=dpr[sum(layers[:i]) + j], **block_kwargs))
                in_chans = planes * block_fn.expansion
                if j == 0 and stride > 1:
                    span, reduction = max(span // stride, 1), reduction * stride
            stages.append(nn.Sequential(*blocks))
            info.append(dict(num_chs=in_chans, reduction=reduction, module=f"stages.{i}"))
        return stages, info

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (``use_reentrant=False``)."""
        self.grad_checkpointing = enable

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for blk in stage:
            x = checkpoint_module(blk, x, enabled=self.grad_checkpointing)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> Any:
        """Stage outputs, each ``(B, C_i, H_i, W_i)``; timm's signature.

        Args:
            x: ``(B, C_in, H, W)``.
            indices: Stage indices; int ``n`` = last ``n`` stages, ``None`` = all.
            norm: No effect (the encoder has no final norm); kept for the common signature.
            stop_early: Skip the stages after the last requested one (with ``intermediates_only`` only).
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: Return only the list.

        Returns:
            A list with one map per requested stage, or ``(final, list)`` with ``final`` the output of
            :meth:`forward_features` (the last stage map).
        """
        check_choice("output_fmt", output_fmt, ("NCHW", "NHWC"), error=ValueError)
        take, last = take_indices(len(self.stages), indices)
        stages = self.stages[:last + 1] if stop_early and intermediates_only else self.stages
        x = self.stem(x)  # (B, 64s, H/2, W/2)
        feats = []
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)  # (B, C_i, H_i, W_i)
            if i in take:
                feats.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
        return feats if intermediates_only else (x, feats)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> last stage map ``(B, C, H/2^n, W/2^n)``."""
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and classifier: ``(B, C, h, w)`` -> ``(B, num_classes)``."""
        x = self.head_drop(x.mean(dim=(2, 3)))  # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


def _create(pretrained: Optional[Any], defaults: Dict[str, Any], overrides: Dict[str, Any]) -> AxialEncoder:
    return build_model(AxialEncoder, pretrained, (), **{**defaults, **overrides})


_TINY = dict(img_size=32, layers=(1, 1), width=0.125)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 128, 128), spatial_dims=2))
def gated_axial_tiny(pretrained: Optional[Any] = None, **overrides: Any) -> AxialEncoder:
    """MedT's gated axial-attention encoder (``s=0.125``, layers ``[1, 2, 4, 1]``, 128 px)."""
    return _create(pretrained, dict(img_size=128, layers=(1, 2, 4, 1), width=0.125, gated=True), overrides)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 128, 128), spatial_dims=2))
def axial_tiny(pretrained: Optional[Any] = None, **overrides: Any) -> AxialEncoder:
    """Axial attention with relative encodings and no gates (MedT's ``axialunet`` encoder)."""
    return _create(pretrained, dict(img_size=128, layers=(1, 2, 4, 1), width=0.125, gated=False), overrides)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 128, 128), spatial_dims=2))
def axial_nopos_tiny(pretrained: Optional[Any] = None, **overrides: Any) -> AxialEncoder:
    """Axial attention without positional encodings (MedT's local-branch encoder)."""
    return _create(pretrained, dict(img_size=128, layers=(1, 2, 4, 1), width=0.125, gated=False, rel_pos=False),
                   overrides)

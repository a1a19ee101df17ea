"""R50+ViT hybrid: a BiT ResNetV2 stem and stages feed ViT tokens from their stride-16 feature map.

Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929, Sec. 3.1 "Hybrid Architecture"; the CNN is
the BiT ResNet (Kolesnikov et al., "Big Transfer (BiT)", arXiv:1912.11370) in its *non*-pre-activation form with
weight-standardised convolutions and GroupNorm(32), units (3, 4, 9) and no fourth stage. TransUNet (Chen et al.,
arXiv:2102.04306) uses this encoder with skip connections from the stride-2/4/8 CNN features, which
:meth:`VisionTransformerHybrid.forward_intermediates_with_skips` returns with the block outputs (the inherited
``forward_intermediates`` has timm's signature and returns the block outputs only). Key names match timm's
``vit_base_r50_s16_224``.

Two ResNet variants (``resnet_variant=``) read the same weights (``R50+ViT-B_16.npz``, timm state dicts) and
differ in four details, which change the outputs by a few per cent:

==========================  ===================================  ===========================================
detail                      ``"timm"`` (timm, Google JAX)        ``"official"`` (TransUNet's PyTorch code)
==========================  ===================================  ===========================================
convolution padding         TF SAME (asymmetric when strided)    symmetric ``k // 2`` (``StdConv2d``)
stem max pool               3x3/2 SAME (56 px at 224)            3x3/2 unpadded (55 px; the stride-4 skip is
                                                                 zero-padded to 56 at the bottom/right)
projection-shortcut norm    GroupNorm(32)                        GroupNorm(C, C): one group per channel
eps: weight std. / GN       1e-8 / 1e-5                          1e-5 / 1e-6 (projection GN 1e-5)
==========================  ===================================  ===========================================

``"timm"`` reproduces timm's ``vit_base_r50_s16_224`` and the Google JAX model; ``"official"`` reproduces the
encoder of the official TransUNet (Beckschen/TransUNet ``networks/vit_seg_modeling_resnet_skip.py``), whose
Synapse results were obtained with it.

Dataflow::

    x (B, 3, 224, 224) -> stem: StdConv 7x7/2 -> GN+ReLU [skip, stride 2] -> MaxPool 3x3/2
      -> stage0 (3 units, 256) [skip, stride 4] -> stage1 (4 units, 512, /2) [skip, stride 8]
      -> stage2 (9 units, 1024, /2) -> proj 1x1 -> (B, 14, 14, 768) -> ViT-B blocks -> norm -> head
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from backbones import register_model
from backbones._builder import build_model, take_indices
from backbones.convert import VIT_CONVERTERS
from backbones.layers import to_ntuple
from backbones.layers.std_conv import GroupNormAct, MaxPool2dSame, StdConv2d, StdConv2dSame
from backbones.models.vit import VisionTransformer
from engine.choices import check_choice

__all__ = ["Bottleneck", "ResNetV2", "HybridEmbed", "VisionTransformerHybrid", "RESNET_VARIANTS"]

#: ``resnet_variant`` values: timm/Google (SAME padding, GroupNorm(32) shortcut) or the official TransUNet code.
RESNET_VARIANTS = ("timm", "official")


class DownsampleConv(nn.Module):
    """Projection shortcut: 1x1 strided StdConv + GroupNorm (no activation); keys ``conv``, ``norm``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv_layer: Type[nn.Module],
                 norm_layer: Type[nn.Module]) -> None:
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, 1, stride=stride)
        self.norm = norm_layer(out_chs, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Non-pre-activation bottleneck unit (1x1 -> 3x3/stride -> 1x1, GN after each conv, ReLU after the sum).

    Args:
        in_chs: Input channels.
        out_chs: Output channels (4x the bottleneck width).
        stride: Stride of the 3x3 conv and the projection shortcut.
        conv_layer: Convolution class (``StdConv2dSame``).
        norm_layer: Norm+activation class (``GroupNormAct``).
        proj_norm_layer: Norm class of the projection shortcut (default ``norm_layer``).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, conv_layer: Type[nn.Module] = StdConv2dSame,
                 norm_layer: Type[nn.Module] = GroupNormAct, proj_norm_layer: Optional[Type[nn.Module]] = None) -> None:
        super().__init__()
        mid = out_chs // 4
        proj = stride != 1 or in_chs != out_chs
        self.downsample = (DownsampleConv(in_chs, out_chs, stride, conv_layer, proj_norm_layer or norm_layer)
                           if proj else None)
        self.conv1 = conv_layer(in_chs, mid, 1)
        self.norm1 = norm_layer(mid)
        self.conv2 = conv_layer(mid, mid, 3, stride=stride)
        self.norm2 = norm_layer(mid)
        self.conv3 = conv_layer(mid, out_chs, 1)
        self.norm3 = norm_layer(out_chs, apply_act=False)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(x + shortcut)


class ResNetStage(nn.Module):
    """``depth`` bottleneck units; the first one strides and projects. Key ``blocks.{i}``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, depth: int, **layers: Any) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1,
                                                 **layers) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def _per_channel_gn(num_channels: int, apply_act: bool = True) -> nn.Module:
    """The official TransUNet projection-shortcut norm: ``GroupNorm(C, C)`` (eps 1e-5)."""
    return GroupNormAct(num_channels, num_groups=num_channels, eps=1e-5, apply_act=apply_act)


def _pad_to(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``(B, C, h, w)`` at the bottom/right up to ``size`` (official TransUNet skip features)."""
    dh, dw = size[0] - x.shape[2], size[1] - x.shape[3]
    return F.pad(x, (0, max(dw, 0), 0, max(dh, 0))) if dh > 0 or dw > 0 else x


class ResNetV2(nn.Module):
    """BiT ResNetV2 feature extractor without pre-activation (the R50 of R50+ViT), no pooling/head.

    Args:
        layers: Units per stage, e.g. ``(3, 4, 9)``; stage ``i`` has ``256 * 2**i * width_factor`` channels.
        in_chans: Input channels.
        width_factor: Channel multiplier.
        conv_eps: Weight-standardisation epsilon (default 1e-8 for ``"timm"``, 1e-5 for ``"official"``).
        gn_eps: GroupNorm epsilon (default 1e-5 for ``"timm"``, 1e-6 for ``"official"``).
        variant: ``"timm"`` or ``"official"`` (TransUNet's code), see the module docstring.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 9), in_chans: int = 3, width_factor: int = 1,
                 conv_eps: Optional[float] = None, gn_eps: Optional[float] = None, variant: str = "timm") -> None:
        super().__init__()
        if not layers or any(d < 1 for d in layers):
            raise ValueError(f"layers must be a non-empty sequence of positive unit counts, got {layers}")
        self.variant = check_choice("resnet_variant", variant, RESNET_VARIANTS, error=ValueError)
        official = variant == "official"
        conv = partial(StdConv2d if official else StdConv2dSame, eps=conv_eps or (1e-5 if official else 1e-8))
        norm = partial(GroupNormAct, num_groups=32, eps=gn_eps or (1e-6 if official else 1e-5))
        stem_chs = 64 * width_factor
        self.stem = nn.Sequential()
        self.stem.add_module("conv", conv(in_chans, stem_chs, 7, stride=2))
        self.stem.add_module("norm", norm(stem_chs))
        self.stem.add_module("pool", nn.MaxPool2d(3, 2) if official else MaxPool2dSame(3, 2))
        self.stages = nn.Sequential()
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=stem_chs, reduction=2, module="stem.norm")]
        prev, stride = stem_chs, 4
        for i, depth in enumerate(layers):
            out = 256 * 2 ** i * width_factor
            self.stages.add_module(str(i), ResNetStage(prev, out, 1 if i == 0 else 2, depth, conv_layer=conv,
                                                       norm_layer=norm,
                                                       proj_norm_layer=_per_channel_gn if official else None))
            prev, stride = out, stride * (1 if i == 0 else 2)
            self.feature_info.append(dict(num_chs=out, reduction=stride, module=f"stages.{i}"))
        self.num_features = prev
        self.reduction = stride
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def output_size(self, size: int) -> int:
        """Side of the final feature map for an input side ``size`` (``ceil(size / 16)`` for R50 whenever
        ``size`` is a multiple of 16, in both variants)."""
        size = -(-size // 2)  # stem conv 7x7/2: SAME, or padding 3
        size = (size - 3) // 2 + 1 if self.variant == "official" else -(-size // 2)  # max pool 3x3/2
        for _ in range(len(self.stages) - 1):
            size = -(-size // 2)  # strided 3x3: SAME, or padding 1
        return size

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``(B, C_in, H, W)`` -> final map ``(B, C, H/16, W/16)`` and every earlier feature of ``feature_info``
        (stem after GN+ReLU at stride 2, then stage outputs; ``"official"`` zero-pads them to ``H // stride``)."""
        H, W = x.shape[2:]
        x = self.stem.norm(self.stem.conv(x))  # (B, 64, H/2, W/2)
        feats = [x]
        x = self.stem.pool(x)  # (B, 64, H/4, W/4); official: (H/2 - 1) // 2
        for stage, info in zip(self.stages, self.feature_info[1:]):
            x = stage(x)
            red = info["reduction"]
            feats.append(_pad_to(x, (H // red, W // red)) if self.variant == "official" else x)
        return x, feats[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class HybridEmbed(nn.Module):
    """CNN feature map -> patch tokens by a ``patch_size`` conv (key ``proj``); the CNN is ``backbone``.

    Args:
        backbone: CNN with ``reduction`` (output stride), ``num_features`` and ``forward_features(x) ->
            (map, skip features)``.
        img_size: Input size (H, W).
        patch_size: Patch size on the CNN feature map (1 for R50+ViT-B/16).
        in_chans: Input channels (the backbone must have been built with them).
        embed_dim: Token width.
        spatial_dims: Must be 2.
        flatten: Must be False (the ViT flattens the grid).
        strict_img_size: Require inputs of exactly ``img_size``.
    """

    def __init__(self, backbone: nn.Module, img_size: Union[int, Sequence[int]] = 224, patch_size: int = 1,
                 in_chans: int = 3, embed_dim: int = 768, spatial_dims: int = 2, flatten: bool = False,
                 strict_img_size: bool = True) -> None:
        super().__init__()
        if spatial_dims != 2 or flatten:
            raise ValueError(f"HybridEmbed is 2D and returns a grid; got spatial_dims={spatial_dims}, "
                             f"flatten={flatten}")
        self.backbone = backbone
        self.img_size = to_ntuple(img_size, 2, "img_size")
        self.patch_size = to_ntuple(patch_size, 2, "patch_size")
        size_fn = getattr(backbone, "output_size", lambda s: -(-s // backbone.reduction))  # SAME: ceil(size / stride)
        feat = tuple(size_fn(s) for s in self.img_size)
        if any(f % p for f, p in zip(feat, self.patch_size)):
            raise ValueError(f"feature map {feat} of img_size {self.img_size} is not divisible by patch_size "
                             f"{self.patch_size}")
        self.grid_size = tuple(f // p for f, p in zip(feat, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(backbone.num_features, embed_dim, self.patch_size, stride=self.patch_size)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``(B, C_in, H, W)`` -> tokens grid ``(B, H', W', C)`` and the CNN skip features."""
        if x.ndim != 4 or (self.strict_img_size and tuple(x.shape[2:]) != self.img_size):
            raise ValueError(f"expected input (B, C, {self.img_size[0]}, {self.img_size[1]}), got {tuple(x.shape)}")
        x, feats = self.backbone.forward_features(x)  # (B, 1024, H/16, W/16)
        x = self.proj(x).permute(0, 2, 3, 1)  # (B, H', W', C)
        return x, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class VisionTransformerHybrid(VisionTransformer):
    """R50+ViT (arXiv:2010.11929): :class:`VisionTransformer` on :class:`HybridEmbed` of a :class:`ResNetV2`.

    Args:
        layers: ResNet units per stage (``(3, 4, 9)`` for R50+ViT; fewer stages change the token stride).
        width_factor: ResNet channel multiplier.
        conv_eps: Weight-standardisation epsilon (default: the variant's).
        resnet_variant: ``"timm"`` (timm/Google, default) or ``"official"`` (TransUNet's code), see the module
            docstring.
        img_size: Input size.
        patch_size: Patch size on the CNN feature map (1).
        in_chans: Input channels.
        **kwargs: :class:`VisionTransformer` arguments (``embed_dim``, ``depth``, ``num_heads``, ...).

    Example::

        >>> model = create_model("vit_base_r50_s16_224", num_classes=0)
        >>> skips, final, feats = model.forward_intermediates_with_skips(torch.randn(1, 3, 224, 224), indices=1)
        >>> [tuple(f.shape) for f in skips + feats]
        [(1, 64, 112, 112), (1, 256, 56, 56), (1, 512, 28, 28), (1, 768, 14, 14)]
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 9), width_factor: int = 1, conv_eps: Optional[float] = None,
                 resnet_variant: str = "timm", img_size: Union[int, Sequence[int]] = 224, patch_size: int = 1,
                 in_chans: int = 3, **kwargs: Any) -> None:
        if kwargs.get("spatial_dims", 2) != 2:
            raise ValueError(f"the R50+ViT hybrid is 2D, got spatial_dims={kwargs['spatial_dims']}")
        backbone = ResNetV2(layers, in_chans=in_chans, width_factor=width_factor, conv_eps=conv_eps,
                            variant=resnet_variant)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_layer=partial(HybridEmbed, backbone=backbone), **kwargs)
        self.cnn_feature_info = backbone.feature_info[:-1]
        self.pretrained_cfg["first_conv"] = "patch_embed.backbone.stem.conv"

    def forward_intermediates_with_skips(
            self, x: torch.Tensor, indices: Union[None, int, Sequence[int]] = None, return_prefix_tokens: bool = False,
            norm: bool = False, output_fmt: Optional[str] = None,
    ) -> Tuple[List[torch.Tensor], torch.Tensor, List[Any]]:
        """One pass returning the CNN skip features as well as :meth:`forward_intermediates`'s outputs (TransUNet).

        Args:
            x: ``(B, C_in, H, W)``.
            indices, return_prefix_tokens, norm, output_fmt: As :meth:`VisionTransformer.forward_intermediates`
                (transformer blocks only).

        Returns:
            ``(skips, final, intermediates)``: the CNN features listed in ``cnn_feature_info`` (strides 2, 4, 8
            for R50: ``(B, 64, H/2, W/2)``, ``(B, 256, H/4, W/4)``, ``(B, 512, H/8, W/8)``, always NCHW), the
            output of :meth:`forward_features` ``(B, P+N, C)`` and the selected block outputs.
        """
        fmt = self._check_fmt(output_fmt)
        take, _ = take_indices(len(self.blocks), indices)
        grid_x, skips = self.patch_embed.forward_features(x)  # (B, H', W', C), CNN skips
        tokens, grid = self._add_tokens(grid_x)  # (B, P+N, C)
        tokens, raw = self._run_blocks(tokens, take)
        return skips, self.norm(tokens), [self._format_tokens(y, grid, fmt, norm, return_prefix_tokens) for y in raw]


def _create_hybrid(pretrained: Optional[Any], base: Dict[str, Any], overrides: Dict[str, Any]) -> nn.Module:
    return build_model(VisionTransformerHybrid, pretrained, VIT_CONVERTERS, **{**base, **overrides})


@register_model(tiny=dict(layers=(1, 1, 1), img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=10),
                meta=dict(input_size=(3, 224, 224), spatial_dims=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                aliases=('vit_r50',))
def vit_base_r50_s16_224(pretrained: Optional[Any] = None, **overrides: Any) -> VisionTransformerHybrid:
    """R50+ViT-B/16 at 224 (arXiv:2010.11929), the TransUNet encoder; 98.7M parameters with a 1000-class head
    (97.9M without).

    Loads timm ``vit_base_r50_s16_224`` state dicts and Google ``R50+ViT-B_16.npz`` files; ``resnet_variant=
    "official"`` gives TransUNet's R50 (same weights, see the module docstring).
    """
    return _create_hybrid(pretrained, dict(layers=(3, 4, 9), embed_dim=768, depth=12, num_heads=12), overrides)

"""TransUNet: an R50+ViT-B/16 encoder with a cascaded upsampler (CUP) and CNN skip connections.

Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation", arXiv:2102.04306.
The encoder is the backbones R50+ViT hybrid ``vit_base_r50_s16_224`` (Dosovitskiy et al., arXiv:2010.11929), read
through ``forward_intermediates_with_skips``; the decoder keeps the key names of the official code
(``decoder.conv_more``, ``decoder.blocks.{i}.conv{1,2}``, ``segmentation_head.0``).

Dataflow (paper config: 224 px, 9 classes)::

    x (B, 1, 224, 224) -> repeat to 3 channels -> R50 stem/stages --- skips: (B, 64, 112^2), (B, 256, 56^2),
      -> 768-d tokens (B, 196, 768) -> 12 ViT-B blocks -> norm            (B, 512, 28^2)
      -> conv_more 3x3 (B, 512, 14^2)
      -> 4 x [up x2 (bilinear) -> concat skip (deepest first, n_skip of them) -> 2 x (conv3x3 - BN - ReLU)]
         channels (256, 128, 64, 16)                                      (B, 16, 224, 224)
      -> segmentation head conv3x3                                        (B, 9, 224, 224)

Grayscale input: as in the official code, a one-channel image is repeated to three channels before the R50
(``in_chans=1``). Summing the pretrained first-conv filters instead would not be equivalent here, because the
R50 convolutions are weight-standardised (the standardisation of a summed kernel differs from the sum of the
standardised kernels); repeating keeps the ImageNet-21k filters exact.

R50 variant: the default ``resnet_variant="official"`` is the R50 of the official TransUNet code
(Beckschen/TransUNet ``networks/vit_seg_modeling_resnet_skip.py``: symmetric ``StdConv2d`` padding, an unpadded
stem max pool whose 55-px stride-4 skip is zero-padded to 56, ``GroupNorm(C, C)`` on the projection shortcuts,
eps 1e-5/1e-6), so the same npz gives the official TransUNet's features; ``resnet_variant="timm"`` is timm's and
Google's R50 (SAME padding, ``GroupNorm(32)`` shortcuts), which gives timm's ``vit_base_r50_s16_224`` features.
With the same weights the two differ by a few per cent (see :mod:`backbones.models.vit_hybrid`).

Pretrained weights: ``R50+ViT-B_16.npz`` (through the backbones Google npz converter) or a timm
``vit_base_r50_s16_224`` state dict load into ``encoder.*``; the decoder and head stay newly initialised and
are listed in the load report. A vtk TransUNet checkpoint loads completely.

Example::

    >>> import medvit
    >>> net = medvit.create_model("transunet", pretrained="R50+ViT-B_16.npz", num_classes=9)
    >>> net(torch.randn(2, 1, 224, 224)).shape
    torch.Size([2, 9, 224, 224])
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones._builder import build_model
from backbones.layers import to_ntuple
from medvit import register_model
from medvit.convert import TRANSUNET_CONVERTERS

__all__ = ["TransUNet", "DecoderCup", "transunet"]

IntOrSeq = Union[int, Sequence[int]]


class ConvBnReLU(nn.Sequential):
    """``conv kxk (no bias) - BatchNorm - ReLU``; keys ``0`` (conv) and ``1`` (norm) as the official code."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3,
                 norm_layer: type = nn.BatchNorm2d) -> None:
        super().__init__(nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False),
                         norm_layer(out_chs), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """``up x2 (bilinear, align_corners) -> [concat skip] -> conv1 -> conv2``."""

    def __init__(self, in_chs: int, out_chs: int, skip_chs: int = 0, norm_layer: type = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = ConvBnReLU(in_chs + skip_chs, out_chs, norm_layer=norm_layer)
        self.conv2 = ConvBnReLU(out_chs, out_chs, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)  # (B, C, 2h, 2w)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)  # (B, C + C_skip, 2h, 2w)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """Cascaded upsampler: ``conv_more`` then one :class:`DecoderBlock` per doubling.

    Args:
        embed_dim: Token width entering ``conv_more``.
        skip_channels: Channels of the CNN skips, deepest first (``[512, 256, 64]`` for R50).
        decoder_channels: Output channels of each block (``(256, 128, 64, 16)``).
        head_channels: Output channels of ``conv_more`` (512).
        n_skip: How many skips are used (the first ``n_skip`` blocks get one).
        norm_layer: Norm class.
    """

    def __init__(self, embed_dim: int, skip_channels: Sequence[int],
                 decoder_channels: Sequence[int] = (256, 128, 64, 16), head_channels: int = 512, n_skip: int = 3,
                 norm_layer: type = nn.BatchNorm2d) -> None:
        super().__init__()
        if not 0 <= n_skip <= min(len(skip_channels), len(decoder_channels)):
            raise ValueError(f"n_skip {n_skip} must be in [0, {min(len(skip_channels), len(decoder_channels))}] "
                             f"for skips {list(skip_channels)} and decoder channels {list(decoder_channels)}")
        self.n_skip = n_skip
        self.conv_more = ConvBnReLU(embed_dim, head_channels, norm_layer=norm_layer)
        ins = [head_channels] + list(decoder_channels[:-1])
        skips = [c if i < n_skip else 0 for i, c in enumerate(list(skip_channels) + [0] * len(decoder_channels))]
        self.blocks = nn.ModuleList(DecoderBlock(i, o, s, norm_layer) for i, o, s in zip(ins, decoder_channels, skips))

    def forward(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        """``x`` ``(B, C, h, w)`` token map and skips deepest first -> ``(B, decoder_channels[-1], H, W)``."""
        x = self.conv_more(x)  # (B, 512, h, w)
        for i, blk in enumerate(self.blocks):
            x = blk(x, skips[i] if i < self.n_skip else None)
        return x


class TransUNet(nn.Module):
    """TransUNet (Chen et al., arXiv:2102.04306) on the backbones R50+ViT hybrid.

    Args:
        img_size: Input size (224).
        in_chans: Input channels; 1 is repeated to 3 for the R50 (see the module docstring).
        num_classes: Output classes (9: the 8 Synapse organs and background).
        layers: R50 units per stage ((3, 4, 9)).
        embed_dim: ViT width.
        depth: ViT blocks.
        num_heads: ViT heads.
        mlp_ratio: ViT MLP ratio.
        decoder_channels: CUP block widths; one block per doubling of the token stride (16 -> 4 blocks).
        head_channels: ``conv_more`` width.
        n_skip: CNN skips used (3).
        drop_rate: ViT dropout (embeddings, projections).
        attn_drop_rate: ViT attention dropout.
        drop_path_rate: ViT stochastic depth.
        encoder: Name of the backbones hybrid entry point.
        resnet_variant: ``"official"`` (TransUNet's code, default) or ``"timm"`` (timm/Google), see the module
            docstring.
    """

    spatial_dims = 2

    def __init__(self, img_size: IntOrSeq = 224, in_chans: int = 1, num_classes: int = 9,
                 layers: Sequence[int] = (3, 4, 9), embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, decoder_channels: Sequence[int] = (256, 128, 64, 16),
                 head_channels: int = 512, n_skip: int = 3, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, encoder: str = "vit_base_r50_s16_224",
                 resnet_variant: str = "official") -> None:
        super().__init__()
        self.img_size = to_ntuple(img_size, 2, "img_size")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.encoder = backbones.create_model(
            encoder, img_size=self.img_size, in_chans=3 if in_chans == 1 else in_chans, num_classes=0,
            global_pool="", class_token=False, layers=tuple(layers), embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, proj_drop_rate=drop_rate, pos_drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, resnet_variant=resnet_variant)
        self._check_stride(decoder_channels)
        skips = [f["num_chs"] for f in reversed(self.encoder.cnn_feature_info)]  # deepest first
        self.decoder = DecoderCup(embed_dim, skips, decoder_channels, head_channels, n_skip)
        self.num_features = decoder_channels[-1]
        self.segmentation_head = nn.Sequential(nn.Conv2d(self.num_features, num_classes, 3, padding=1))
        self.pretrained_cfg: Dict[str, Any] = dict(
            input_size=(in_chans, *self.img_size), first_conv="encoder.patch_embed.backbone.stem.conv",
            classifier="segmentation_head.0", mean=(0.0,) * in_chans, std=(1.0,) * in_chans)
        self.pretrained_ignore_keys = ("decoder.*", "segmentation_head.*")  # encoder-only checkpoints

    def _check_stride(self, decoder_channels: Sequence[int]) -> None:
        embed = self.encoder.patch_embed
        stride = embed.backbone.reduction * embed.patch_size[0]
        if 2 ** len(decoder_channels) != stride:
            raise ValueError(f"{len(decoder_channels)} decoder blocks upsample x{2 ** len(decoder_channels)}, but "
                             f"the encoder's token stride is {stride} (needs {int(math.log2(stride))} blocks)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each ViT block in the backward pass."""
        self.encoder.set_grad_checkpointing(enable)

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Builder hook: the encoder's own adaptation (position grid, class token) on ``encoder.*``, and the
        drop of an image-classification head the encoder does not have."""
        enc = self.encoder.adapt_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("encoder.")})
        own = self.encoder.state_dict()
        enc = {k: v for k, v in enc.items() if k in own or not k.startswith(("head.", "fc_norm."))}
        out = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
        out.update({f"encoder.{k}": v for k, v in enc.items()})
        return out

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"TransUNet expects (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        return x.expand(-1, 3, -1, -1) if self.in_chans == 1 else x  # (B, 3, H, W)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[IntOrSeq] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> Any:
        """ViT block maps ``(B, C, H/16, W/16)`` (or ``"NLC"`` tokens); timm's signature, arguments as
        :meth:`VisionTransformer.forward_intermediates` (the R50 skips come from
        ``encoder.forward_intermediates_with_skips``).

        Returns:
            The list, or ``(final, list)`` with ``final`` the decoder features of :meth:`forward_features` (one
            encoder pass for both), so ``forward_head(final) == forward(x)``.
        """
        x = self._rgb(x)
        if intermediates_only:
            return self.encoder.forward_intermediates(x, indices, norm=norm, stop_early=stop_early,
                                                      output_fmt=output_fmt, intermediates_only=True)
        cnn, final, inter = self.encoder.forward_intermediates_with_skips(x, indices, norm=norm, output_fmt=output_fmt)
        return self._decode(cnn, final), inter

    def _decode(self, cnn: List[torch.Tensor], final: torch.Tensor) -> torch.Tensor:
        """CNN skips (strides 2, 4, 8) and the encoder's final normalised tokens ``(B, N, C)`` -> decoder
        features ``(B, 16, H, W)``."""
        grid = self.encoder.patch_embed.grid_size  # the hybrid embedding only takes img_size inputs
        final = final[:, self.encoder.num_prefix_tokens:]  # (B, N, C)
        tokens = final.transpose(1, 2).reshape(final.shape[0], final.shape[-1], *grid)  # (B, C, H/16, W/16)
        return self.decoder(tokens, cnn[::-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> decoder features ``(B, 16, H, W)``."""
        x = self._rgb(x)
        cnn, final, _ = self.encoder.forward_intermediates_with_skips(x, indices=1)
        return self._decode(cnn, final)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, 16, H, W)`` -> logits ``(B, num_classes, H, W)``."""
        return x if pre_logits else self.segmentation_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


@register_model(tiny=dict(img_size=32, layers=(1, 1, 1), embed_dim=32, depth=2, num_heads=2,
                          decoder_channels=(16, 8, 8, 4), head_channels=16),
                meta=dict(input_size=(1, 224, 224), spatial_dims=2,
                          protocol=dict(dataset='synapse', roi=(224, 224), a_min=-125.0, a_max=275.0, num_classes=9)))
def transunet(pretrained: Optional[Any] = None, **overrides: Any) -> TransUNet:
    """TransUNet at the paper config: R50+ViT-B/16, 224 px, CUP (256, 128, 64, 16) with 3 skips, 9 classes
    (about 105M parameters). ``pretrained``: ``R50+ViT-B_16.npz``, a timm ``vit_base_r50_s16_224`` state dict
    (encoder only) or a vtk TransUNet checkpoint."""
    return build_model(TransUNet, pretrained, TRANSUNET_CONVERTERS, **overrides)

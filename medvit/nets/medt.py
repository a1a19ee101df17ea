"""MedT: Medical Transformer with gated axial attention and local-global (LoGo) training.

Valanarasu et al., "Medical Transformer: Gated Axial-Attention for Medical Image Segmentation", arXiv:2102.10662.
Gated axial attention: :mod:`backbones.layers.axial_attention`; encoders: :mod:`backbones.models.axial`.

Dataflow (paper config: 128 px, ``s = 0.125``, layers ``[1, 2, 4, 1]``, 4 x 4 local patches)::

    x (B, C, H, W) ------------------------------+
    | global branch: stem C -> 8 -> 128 -> 8       | local branch: split into n x n patches (B*n*n, C, H/n, W/n)
    |   + gated axial stages 1-2 (relative         |   stem C -> 64 -> 128 -> 64 + axial stages 1-4 (no positional
    |   encodings, gates)                          |   encoding)
    | skip-add decoder -> (B, 16, H, W)            |   skip-add decoder -> (B*n*n, 16, H/n, W/n) -> (B, 16, H, W)
    +------------------- add ----------------------+
    fuse conv3x3 - ReLU - head conv1x1                                  (B, num_classes, H, W)

The architecture is the official ``medt_net`` (``lib/models/axialnet.py``, 1,560,140 parameters at 128 px with 3
input channels and 2 classes): its local stem is built from ``self.inplanes`` after the global stages, i.e. 64 wide
(``local_stem_width``), and its attention is the official per-term-normalised one (``attn_variant="official"``,
:mod:`backbones.layers.axial_attention`). Official checkpoints load through ``medvit/convert/medt_official.py``
(strict; the 35,570 parameters of modules the official forward never calls, ``AxialBlock_wopos.conv1`` x 8 and
``adjust_p``, are dropped, so vtk's MedT has 1,524,570). Remaining differences, none of which changes an
eval-mode output: the local patches run as one batch instead of a Python double loop over a hard-coded 4 x 4 grid
of 32-px crops (in training mode BatchNorm therefore sees all patches at once, where the official loop normalises
and updates the running statistics patch by patch); the grid is ``local_patches`` per side and the patch size
follows the input; the relative spans are built from ``img_size`` but any input whose sides are multiples of
``16 * local_patches`` runs (see :mod:`backbones.layers.axial_attention`); decoder upsampling goes to the skip's
size rather than a fixed factor 2; the gates are trainable from the first step.

Example::

    >>> import medvit
    >>> net = medvit.create_model("medt", img_size=128, in_chans=3, num_classes=2)
    >>> net(torch.randn(2, 3, 128, 128)).shape
    torch.Size([2, 2, 128, 128])
"""

from __future__ import annotations

from functools import partial
from typing import Any, List, Optional, Sequence, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from backbones._builder import build_model, take_indices
from backbones.layers.axial_attention import VARIANTS, AxialAttention
from backbones.models.axial import AxialEncoder
from engine.choices import check_choice
from medvit import register_model
from medvit.convert import MEDT_CONVERTERS

__all__ = ["MedT", "SkipAddDecoder", "medt"]


class SkipAddDecoder(nn.Module):
    """MedT's decoder: ``conv3x3 -> upsample to the skip -> ReLU -> add skip`` up the encoder, then to full size.

    Args:
        channels: Encoder stage channels, shallow to deep (``[c_1, ..., c_n]``).
        out_chans: Output channels (``c_1 // 2`` in MedT).
        bottleneck: Start with a strided ``c_n -> c_n`` conv that goes below the deepest stage and back (MedT's
            local branch); the global branch starts directly from the deepest stage.
    """

    def __init__(self, channels: Sequence[int], out_chans: int, bottleneck: bool = False) -> None:
        super().__init__()
        channels = list(channels)
        self.bottleneck = nn.Conv2d(channels[-1], channels[-1], 3, stride=2, padding=1) if bottleneck else None
        self.ups = nn.ModuleList(nn.Conv2d(channels[i], channels[i - 1], 3, padding=1)
                                 for i in range(len(channels) - 1, 0, -1))
        self.out = nn.Conv2d(channels[0], out_chans, 3, padding=1)

    @staticmethod
    def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.relu(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False))

    def forward(self, feats: List[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        """``feats`` shallow to deep, each ``(B, c_i, H_i, W_i)`` -> ``(B, out_chans, *out_size)``."""
        x = feats[-1]
        if self.bottleneck is not None:
            x = self._up(self.bottleneck(x), x.shape[2:]) + x  # (B, c_n, H_n, W_n)
        for conv, skip in zip(self.ups, reversed(feats[:-1])):
            x = self._up(conv(x), skip.shape[2:]) + skip  # (B, c_i, H_i, W_i)
        return self._up(self.out(x), out_size)


class MedT(nn.Module):
    """Medical Transformer (gated axial global branch + axial local branch on patches).

    Args:
        img_size: Training size; sets the spans of the relative encodings (MedT: 128).
        in_chans: Input channels (3 in MedT; 1 for grayscale).
        num_classes: Output classes (2: background/foreground).
        layers: Blocks per stage of the local branch; the global branch uses the first ``global_stages``.
        global_stages: Stages in the global branch (2 in MedT).
        width: Width multiplier ``s`` (0.125).
        num_heads: Heads per axial attention layer (8).
        local_patches: Patches per side of the local branch grid (4: a 4 x 4 grid of 32-px patches at 128 px).
        local_stem_width: Output channels of the local branch's stem (default: the channels of the global
            branch's last stage, 64 at ``s = 0.125``, as the official code, which builds it from ``self.inplanes``
            after the global stages).
        attn_variant: ``"official"`` (per-term norms, the official code) or ``"eq2"`` (see
            :mod:`backbones.layers.axial_attention`).
        norm_layer: 2D norm class of both encoders.
        act_layer: Activation class of both encoders.
        drop_path_rate: Stochastic depth of both encoders.
    """

    spatial_dims = 2

    def __init__(self, img_size: int = 128, in_chans: int = 3, num_classes: int = 2,
                 layers: Sequence[int] = (1, 2, 4, 1), global_stages: int = 2, width: float = 0.125,
                 num_heads: int = 8, local_patches: int = 4, local_stem_width: Optional[int] = None,
                 attn_variant: str = "official", norm_layer: Type[nn.Module] = nn.BatchNorm2d,
                 act_layer: Type[nn.Module] = nn.ReLU, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if not 1 <= global_stages <= len(layers):
            raise ValueError(f"global_stages {global_stages} must be in [1, len(layers)={len(layers)}]")
        if local_patches < 1:
            raise ValueError(f"local_patches must be >= 1, got {local_patches}")
        self.multiple = 2 ** len(layers) * local_patches  # input sides must be multiples of this
        if img_size % self.multiple:
            raise ValueError(f"img_size {img_size} must be a multiple of {self.multiple} "
                             f"(2^{len(layers)} per local patch x {local_patches} patches)")
        check_choice("attn_variant", attn_variant, VARIANTS, error=ValueError)
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        self.local_patches = local_patches
        common = dict(in_chans=in_chans, num_classes=0, width=width, num_heads=num_heads, norm_layer=norm_layer,
                      act_layer=act_layer, drop_path_rate=drop_path_rate)
        self.global_branch = AxialEncoder(
            img_size, layers=layers[:global_stages],
            attn_layer=partial(AxialAttention, rel_pos=True, gated=True, variant=attn_variant), **common)
        self.local_branch = AxialEncoder(
            img_size // local_patches, layers=layers,
            stem_width=local_stem_width or self.global_branch.feature_info[-1]["num_chs"],
            attn_layer=partial(AxialAttention, rel_pos=False, gated=False, variant=attn_variant), **common)
        g_chs = [f["num_chs"] for f in self.global_branch.feature_info]
        l_chs = [f["num_chs"] for f in self.local_branch.feature_info]
        self.num_features = g_chs[0] // 2
        self.global_decoder = SkipAddDecoder(g_chs, self.num_features)
        self.local_decoder = SkipAddDecoder(l_chs, self.num_features, bottleneck=True)
        self.fuse = nn.Conv2d(self.num_features, self.num_features, 3, padding=1)
        self.head = nn.Conv2d(self.num_features, num_classes, 1)
        self.pretrained_cfg = dict(input_size=(in_chans, img_size, img_size),
                                   first_conv=("global_branch.stem.conv1", "local_branch.stem.conv1"),
                                   classifier="head", mean=(0.0,) * in_chans, std=(1.0,) * in_chans)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MedT expects (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.multiple or x.shape[3] % self.multiple:
            raise ValueError(f"MedT input sides {tuple(x.shape[2:])} must be multiples of {self.multiple}")

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        """Local branch on an ``n x n`` grid of patches, batched: ``(B, C, H, W)`` -> ``(B, F, H, W)``."""
        B, C, H, W = x.shape
        n = self.local_patches
        p, q = H // n, W // n
        x = x.reshape(B, C, n, p, n, q).permute(0, 2, 4, 1, 3, 5).reshape(B * n * n, C, p, q)  # (B*n*n, C, p, q)
        feats = self.local_branch.forward_intermediates(x, intermediates_only=True)
        x = self.local_decoder(feats, (p, q))  # (B*n*n, F, p, q)
        F_ = x.shape[1]
        return x.reshape(B, n, n, F_, p, q).permute(0, 3, 1, 4, 2, 5).reshape(B, F_, H, W)  # (B, F, H, W)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each axial block in the backward pass (both branches)."""
        self.global_branch.set_grad_checkpointing(enable)
        self.local_branch.set_grad_checkpointing(enable)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> Any:
        """Global-branch stage maps ``(B, C_i, H_i, W_i)``; timm's signature, arguments as
        :meth:`AxialEncoder.forward_intermediates`.

        Returns:
            The list, or ``(final, list)`` with ``final`` the fused features of :meth:`forward_features` (one
            global-branch pass for both), so ``forward_head(final) == forward(x)``.
        """
        self._check(x)
        if intermediates_only:
            return self.global_branch.forward_intermediates(x, indices, norm=norm, stop_early=stop_early,
                                                            output_fmt=output_fmt, intermediates_only=True)
        check_choice("output_fmt", output_fmt, ("NCHW", "NHWC"), error=ValueError)
        take, _ = take_indices(len(self.global_branch.stages), indices)
        feats = self.global_branch.forward_intermediates(x, intermediates_only=True)  # every stage (B, C_i, H_i, W_i)
        inter = [feats[i] if output_fmt == "NCHW" else feats[i].permute(0, 2, 3, 1) for i in take]
        return self._fuse(x, feats), inter

    def _fuse(self, x: torch.Tensor, feats: List[torch.Tensor]) -> torch.Tensor:
        """Input and all global-branch stage maps -> fused decoder features ``(B, F, H, W)``."""
        return self.global_decoder(feats, x.shape[2:]) + self._local(x)  # (B, F, H, W)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> fused decoder features ``(B, F, H, W)`` (``F = 16`` at ``s = 0.125``)."""
        self._check(x)
        return self._fuse(x, self.global_branch.forward_intermediates(x, intermediates_only=True))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, F, H, W)`` -> logits ``(B, num_classes, H, W)``."""
        x = F.relu(self.fuse(x))  # (B, F, H, W)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


@register_model(tiny=dict(img_size=32, layers=(1, 1, 1, 1), local_patches=2), meta=dict(input_size=(3, 128, 128),
                spatial_dims=2, protocol=dict(dataset='glas', roi=(128, 128), num_classes=2)))
def medt(pretrained: Optional[Any] = None, **overrides: Any) -> MedT:
    """MedT at the paper config (128 px, ``s = 0.125``, layers ``[1, 2, 4, 1]``, 4 x 4 local patches); loads
    official ``medt_net`` state dicts and vtk checkpoints."""
    return build_model(MedT, pretrained, MEDT_CONVERTERS, **overrides)

"""UNETR: a 3D ViT encoder with a convolutional U-Net decoder fed by intermediate transformer blocks.

Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", arXiv:2103.10504. The decoder blocks
are MONAI's (``UnetrBasicBlock``, ``UnetrPrUpBlock``, ``UnetrUpBlock``, ``UnetOutBlock``) with MONAI ``UNETR``'s
key names (``encoder1..n``, ``decoder2..n+1``, ``out``), so MONAI and research-contributions checkpoints load
through :mod:`medvit.convert.monai_unetr`. The encoder is :class:`backbones.models.vit.VisionTransformer` in 3D.

Unlike MONAI's ``UNETR`` (12 blocks, 16^3 patches and taps ``[3, 6, 9]`` hard-coded), the taps and the number of
stages are derived: a patch of ``2^n`` voxels gives ``n`` decoder stages and ``n - 1`` skip encoders fed by blocks
``depth * k // n`` (0-based, ``k = 1..n-1``), i.e. ``[3, 6, 9]`` for ViT-B/16 — the block outputs MONAI takes as
``hidden_states_out[3], [6], [9]``.

Dataflow (paper config: 96^3, patch 16, ViT-B, feature size ``f = 16``)::

    x (B, 1, 96, 96, 96) -> ViT (216 tokens, 768) --- block 3 -> encoder2 (x8 up)  (B, 2f, 48^3) -----------+
      |                                          \\-- block 6 -> encoder3 (x4 up)  (B, 4f, 24^3) ---------+  |
      |                                           \\- block 9 -> encoder4 (x2 up)  (B, 8f, 12^3) ------+  |  |
      |                                            final norm (B, 768, 6^3) -> decoder5 (+enc4) -> decoder4 (+enc3)
      +-> encoder1 (B, f, 96^3) ----------------------------------------------> decoder2 (+enc1) <- decoder3 (+enc2)
                                                                                   out 1x1 -> (B, 14, 96, 96, 96)

Example::

    >>> import medvit
    >>> net = medvit.create_model("unetr", img_size=(96, 96, 96), in_chans=1, num_classes=14)
    >>> net = medvit.create_model("unetr", pretrained="UNETR_model_best_acc.pth")  # MONAI/RC checkpoint
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from backbones._builder import build_model, take_indices
from backbones.layers import to_ntuple
from backbones.models.vit import VisionTransformer
from engine.choices import check_choice
from medvit import register_model
from medvit.convert import UNETR_CONVERTERS
from medvit.nets._common import check_norm_name, decoder_channels_last, to_channels_last, view_free_instance_norms

__all__ = ["UNETR", "unetr", "unetr_taps"]

IntOrSeq = Union[int, Sequence[int]]
_PROJ_TYPES = ("conv", "perceptron")


def unetr_taps(depth: int, num_stages: int) -> List[int]:
    """0-based block indices feeding the ``num_stages - 1`` skip encoders: ``depth * k // num_stages``.

    ``unetr_taps(12, 4) == [3, 6, 9]`` (MONAI's ``hidden_states_out[3], [6], [9]``).
    """
    return [depth * k // num_stages for k in range(1, num_stages)]


def _to_map(tokens: torch.Tensor, grid: Sequence[int], channels_last: bool = False) -> torch.Tensor:
    """Tokens ``(B, N, C)`` in grid order -> map ``(B, C, *grid)``; with ``channels_last`` a view with explicit
    channels-last strides (the batch stride included, which oneDNN checks even at batch 1)."""
    B, N, C = tokens.shape
    if channels_last:
        return tokens.contiguous().view(B, *grid, C).permute(0, len(grid) + 1, *range(1, len(grid) + 1))
    return tokens.transpose(1, 2).reshape(B, C, *grid)


def _num_stages(patch_size: Tuple[int, ...]) -> int:
    p = patch_size[0]
    if len(set(patch_size)) != 1 or p < 4 or p & (p - 1):
        raise ValueError(f"UNETR needs an isotropic power-of-two patch size (4, 8, 16, ...), got {patch_size}")
    return int(math.log2(p))


class UNETR(nn.Module):
    """UNETR (Hatamizadeh et al., arXiv:2103.10504) with depth- and patch-derived taps and stages.

    Args:
        img_size: Training ROI ``(D, H, W)`` or int; other inputs divisible by the patch also run (the position
            table is resampled).
        patch_size: Isotropic power-of-two patch (16 -> 4 decoder stages, 8 -> 3, ...).
        in_chans: Input channels.
        num_classes: Output channels.
        feature_size: Decoder base width ``f`` (stage ``k`` has ``f * 2^(k-1)`` channels).
        embed_dim: ViT width (MONAI ``hidden_size``).
        depth: ViT blocks (MONAI hard-codes 12).
        num_heads: ViT heads.
        mlp_ratio: ViT MLP width / ``embed_dim`` (MONAI ``mlp_dim = mlp_ratio * hidden_size``).
        proj_type: ``"perceptron"`` (paper, research-contributions) or ``"conv"`` (MONAI default). Both are the
            same operator (a linear map of each patch); it sets the init (truncated normal 0.02 for perceptron,
            PyTorch's conv default for conv), and checkpoints of either kind load.
        norm_name: Decoder norm as in MONAI (``"instance"``, ``"batch"``, ``("group", {"num_groups": 8})``).
        conv_block: Convolutions after each transposed convolution of the skip encoders.
        res_block: Residual decoder blocks.
        drop_rate: Dropout of the ViT (MONAI ``dropout_rate``: embeddings, attention weights, projections).
        drop_path_rate: Stochastic depth of the ViT.
        qkv_bias: Bias on qkv (False in MONAI).
        norm_eps: ViT LayerNorm epsilon (1e-5 in MONAI).
    """

    spatial_dims = 3

    def __init__(self, img_size: IntOrSeq = 96, patch_size: IntOrSeq = 16, in_chans: int = 1, num_classes: int = 14,
                 feature_size: int = 16, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, proj_type: str = "perceptron", norm_name: Union[str, tuple] = "instance",
                 conv_block: bool = True, res_block: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, qkv_bias: bool = False, norm_eps: float = 1e-5) -> None:
        super().__init__()
        check_choice("proj_type", proj_type, _PROJ_TYPES, error=ValueError)
        check_norm_name(norm_name)
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"drop_rate must be in [0, 1], got {drop_rate}")
        self.img_size = to_ntuple(img_size, 3, "img_size")
        self.patch_size = to_ntuple(patch_size, 3, "patch_size")
        self.num_stages = _num_stages(self.patch_size)
        self.in_chans, self.num_classes, self.feature_size = in_chans, num_classes, feature_size
        self.taps = unetr_taps(depth, self.num_stages)
        self.vit = VisionTransformer(
            img_size=self.img_size, patch_size=self.patch_size, in_chans=in_chans, num_classes=0, global_pool="",
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            class_token=False, dynamic_img_size=True, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate,
            attn_drop_rate=drop_rate, drop_path_rate=drop_path_rate, spatial_dims=3, norm_eps=norm_eps)
        if proj_type == "perceptron":
            nn.init.trunc_normal_(self.vit.patch_embed.proj.weight, std=0.02, a=-2.0, b=2.0)
            nn.init.zeros_(self.vit.patch_embed.proj.bias)
        self._make_decoder(embed_dim, feature_size, norm_name, conv_block, res_block)
        self.num_features = feature_size
        first = ["vit.patch_embed.proj"] + [k[:-len(".weight")] for k in self.state_dict()
                                              if k.startswith("encoder1.") and k.endswith("conv.weight")
                                              and self.get_parameter(k).shape[1] == in_chans]
        self.pretrained_cfg: Dict[str, Any] = dict(input_size=(in_chans, *self.img_size), first_conv=tuple(first),
                                                   classifier="out.conv.conv", mean=(0.0,) * in_chans,
                                                   std=(1.0,) * in_chans, interpolation="trilinear")

    def _make_decoder(self, embed_dim: int, f: int, norm_name: Union[str, tuple], conv_block: bool,
                      res_block: bool) -> None:
        """``encoder1`` (full resolution), ``encoder2..n`` on the taps, ``decoder{n+1}..2``, ``out``."""
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock  # slow import

        n = self.num_stages
        self.encoder1 = UnetrBasicBlock(3, self.in_chans, f, kernel_size=3, stride=1, norm_name=norm_name,
                                        res_block=res_block)
        for k in range(2, n + 1):  # tap at resolution 1/2^(k-1): n - k extra doublings after the first
            self.add_module(f"encoder{k}", UnetrPrUpBlock(
                3, embed_dim, f * 2 ** (k - 1), num_layer=n - k, kernel_size=3, stride=1, upsample_kernel_size=2,
                norm_name=norm_name, conv_block=conv_block, res_block=res_block))
        for k in range(n + 1, 1, -1):
            in_ch = embed_dim if k == n + 1 else f * 2 ** (k - 1)
            self.add_module(f"decoder{k}", UnetrUpBlock(3, in_ch, f * 2 ** (k - 2), kernel_size=3,
                                                        upsample_kernel_size=2, norm_name=norm_name,
                                                        res_block=res_block))
        self.out = UnetOutBlock(3, f, self.num_classes)
        view_free_instance_norms(self)  # same function and keys, no backward copies of the full-res maps

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each ViT block in the backward pass."""
        self.vit.set_grad_checkpointing(enable)

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Builder hook: fit the ``vit.*`` part (position grid, class token of old MONAI checkpoints) and drop the
        ``conv3``/``norm3`` of residual blocks that older MONAI versions always created (RC issue #170)."""
        vit_sd = self.vit.adapt_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("vit.")})
        out = {k: v for k, v in sd.items() if not k.startswith("vit.")}
        out.update({f"vit.{k}": v for k, v in vit_sd.items()})
        own = self.state_dict()
        legacy = (".conv3.conv.weight", ".norm3.weight", ".norm3.bias")
        return {k: v for k, v in out.items() if k in own or not k.endswith(legacy)}

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[IntOrSeq] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCDHW",
                              intermediates_only: bool = False) -> Any:
        """ViT block outputs ``(B, C, d, h, w)`` (or ``"NLC"`` tokens); timm's signature, arguments as
        :meth:`VisionTransformer.forward_intermediates`.

        Returns:
            The list, or ``(final, list)`` with ``final`` the decoder features of :meth:`forward_features` (one
            ViT pass for both), so ``forward_head(final) == forward(x)``.
        """
        if intermediates_only:
            return self.vit.forward_intermediates(x, indices, norm=norm, stop_early=stop_early,
                                                  output_fmt=output_fmt, intermediates_only=True)
        check_choice("output_fmt", output_fmt, ("NCDHW", "NLC"), error=ValueError)
        take, _ = take_indices(len(self.vit.blocks), indices)
        deepest, taps, tokens = self._encode(x, take)
        grid = self._grid(x)
        inter = [self.vit.norm(t) if norm else t for t in tokens]  # (B, N, C)
        return self._decode(x, deepest, taps), [t if output_fmt == "NLC" else _to_map(t, grid) for t in inter]

    def _grid(self, x: torch.Tensor) -> List[int]:
        return [s // p for s, p in zip(x.shape[2:], self.patch_size)]

    def _encode(self, x: torch.Tensor,
                extra: Sequence[int] = ()) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """One ViT pass: the final normalised token map ``(B, C, d, h, w)``, one tap map per skip encoder
        (shallow first) and the raw tokens ``(B, N, C)`` of blocks ``extra``."""
        want = sorted(set(self.taps) | set(extra))
        final, feats = self.vit.forward_intermediates(x, indices=want, output_fmt="NLC")  # (B, N, C) each
        by_block = dict(zip(want, feats))
        grid = self._grid(x)
        cl = decoder_channels_last(x)  # bf16 on CPU: every decoder map channels-last
        taps = [_to_map(by_block[t], grid, cl) for t in self.taps]
        return _to_map(final, grid, cl), taps, [by_block[i] for i in extra]

    def _decode(self, x: torch.Tensor, deepest: torch.Tensor, taps: List[torch.Tensor]) -> torch.Tensor:
        """Input, deepest map and tap maps -> decoder features ``(B, feature_size, D, H, W)``."""
        n = self.num_stages
        if decoder_channels_last(x):
            x = to_channels_last(x)  # (B, C_in, D, H, W); the taps and deepest map already are
        skips = [self.encoder1(x)] + [getattr(self, f"encoder{k}")(t) for k, t in zip(range(2, n + 1), taps)]
        y = deepest
        for k in range(n + 1, 1, -1):  # decoder{k} joins the skip of encoder{k-1}
            y = getattr(self, f"decoder{k}")(y, skips[k - 2])  # (B, f * 2^(k-2), D / 2^(k-2), ...)
        return y

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W)`` -> decoder features ``(B, feature_size, D, H, W)``."""
        deepest, taps, _ = self._encode(x)
        return self._decode(x, deepest, taps)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, f, D, H, W)`` -> logits ``(B, num_classes, D, H, W)``."""
        return x if pre_logits else self.out(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x).contiguous()  # NCDHW whatever the decoder's memory format


@register_model(tiny=dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, feature_size=4),
                meta=dict(input_size=(1, 96, 96, 96), spatial_dims=3, protocol=dict(dataset='btcv', roi=(96, 96, 96),
                spacing=(1.5, 1.5, 2.0), a_min=-175.0, a_max=250.0, num_classes=14)))
def unetr(pretrained: Optional[Any] = None, **overrides: Any) -> UNETR:
    """UNETR at the paper config: 96^3 ROI, 16^3 patches, ViT-B, feature size 16, instance norm, 14 BTCV classes
    (92.6M parameters). Loads MONAI ``UNETR`` / research-contributions checkpoints (``proj_type`` conv or
    perceptron, with or without the old ``cls_token``) and vtk checkpoints."""
    return build_model(UNETR, pretrained, UNETR_CONVERTERS, **overrides)

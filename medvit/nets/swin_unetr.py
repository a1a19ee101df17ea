"""Swin-UNETR: a 3D Swin Transformer encoder with a convolutional U-Net decoder on its multi-scale features.

Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI Images",
arXiv:2201.01266; encoder: Liu et al., "Swin Transformer", arXiv:2103.14030 / "Video Swin Transformer",
arXiv:2106.13230; SSL weights: Tang et al., arXiv:2111.14791.

The encoder is :class:`backbones.models.swin.SwinTransformer` in MONAI's layout (``downsample_last=True``), read
through ``forward_levels``. The decoder is MONAI's blocks with MONAI ``SwinUNETR``'s key names
(``encoder1..4``, ``encoder10``, ``decoder1..5``, ``out``), so MONAI checkpoints load through
:mod:`medvit.convert.monai_swin_unetr` and reproduce MONAI's outputs (window clipping included). The SSL encoder
weights (``model_swinvit.pt``) load into ``swinViT`` with a load report; unlike callers of MONAI's ``load_from``,
a file with no matching key is an error.

Dataflow (paper config: 96^3, patch 2, ``f = 48``; level ``k`` has ``f * 2^k`` channels at stride ``2^(k+1)``)::

    x (B, 1, 96^3) -> SwinViT -> L0 (f, 48^3) L1 (2f, 24^3) L2 (4f, 12^3) L3 (8f, 6^3) L4 (16f, 3^3)
                                  (each LayerNorm-ed over channels, no affine: MONAI's ``normalize``)
    encoder1(x)  encoder2(L0)  encoder3(L1)  encoder4(L2)      L3        encoder10(L4)
        |            |             |             |             |              |
    decoder1 <-- decoder2 <--- decoder3 <--- decoder4 <--- decoder5 <---------+
        -> out (1x1x1 conv) -> (B, 14, 96^3)

Example::

    >>> import medvit
    >>> net = medvit.create_model("swin_unetr", img_size=96, in_chans=1, num_classes=14, feature_size=48)
    >>> net = medvit.create_model("swin_unetr", pretrained="model_swinvit.pt")        # SSL encoder weights
    >>> net = medvit.create_model("swin_unetr", pretrained="swin_unetr_btcv.pt")      # MONAI SwinUNETR checkpoint
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import nn

from backbones._builder import LoadReport, load_pretrained, read_checkpoint, take_indices
from backbones.layers import to_ntuple
from backbones.models.swin import SwinTransformer
from engine.errors import UserError
from medvit import register_model
from medvit.convert import SWIN_UNETR_CONVERTERS, SWIN_UNETR_ENCODER_CONVERTERS
from medvit.nets._common import check_norm_name, decoder_channels_last, to_channels_last, view_free_instance_norms

__all__ = ["SwinUNETR", "swin_unetr"]

_logger = logging.getLogger("medvit")
IntOrSeq = Union[int, Sequence[int]]
_BOTTLENECK = "encoder10"  # MONAI's name for the block on the deepest level
_DECODER_KEYS = ("encoder1.", "decoder1.", "out.")


class SwinUNETR(nn.Module):
    """Swin-UNETR (Hatamizadeh et al., arXiv:2201.01266), MONAI-compatible.

    Args:
        img_size: Training ROI (int or ``(D, H, W)``); any input divisible by ``patch_size * 2**len(depths)``
            (32 for the defaults) runs, non-cubic included.
        in_chans: Input channels.
        num_classes: Output channels.
        feature_size: Encoder embedding width ``f`` (48 Base, 24 Small, 12 Tiny).
        patch_size: Patch size of the encoder.
        depths: Swin blocks per stage.
        num_heads: Heads per stage.
        window_size: Attention window (int or per axis).
        mlp_ratio: MLP width / channels.
        qkv_bias: Bias on qkv.
        norm_name: Decoder norm as in MONAI (``"instance"``, ``"batch"``, ``("group", {"num_groups": 8})``).
        drop_rate: Dropout after the patch embedding and the attention/MLP projections (MONAI ``drop_rate``).
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth of the encoder (MONAI ``dropout_path_rate``).
        normalize: LayerNorm (no affine) on every encoder level before the decoder (MONAI ``normalize``).
        use_v2: Swin-UNETR v2: a residual conv block before each stage's Swin blocks.
    """

    spatial_dims = 3

    def __init__(self, img_size: IntOrSeq = 96, in_chans: int = 1, num_classes: int = 14, feature_size: int = 48,
                 patch_size: int = 2, depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: IntOrSeq = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_name: Union[str, tuple] = "instance", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, normalize: bool = True, use_v2: bool = False) -> None:
        super().__init__()
        for name, rate in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        check_norm_name(norm_name)
        if len(depths) < 2:
            raise ValueError(f"Swin-UNETR needs at least 2 stages, got depths {tuple(depths)}")
        self.img_size = to_ntuple(img_size, 3, "img_size")
        self.in_chans, self.num_classes, self.feature_size = in_chans, num_classes, feature_size
        self.normalize = normalize
        self.num_stages = len(depths)
        self.divisor = patch_size * 2 ** self.num_stages
        if any(s % self.divisor for s in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size * 2**len(depths) = "
                             f"{self.divisor}")
        if norm_name == "instance" and all(s == self.divisor for s in self.img_size):
            # Instance norm cannot train on the one-voxel bottleneck that img_size == divisor on every axis gives.
            raise ValueError(f"img_size {self.img_size} is too small for instance norm with {self.num_stages} stages: "
                             f"use {2 * self.divisor} on some axis, fewer depths, or norm_name='batch'")
        pre = (lambda ch: UnetrBasicBlock(3, ch, ch, kernel_size=3, stride=1, norm_name="instance",
                                          res_block=True)) if use_v2 else None
        self.swinViT = SwinTransformer(
            img_size=self.img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
            embed_dim=feature_size, depths=depths, num_heads=num_heads, window_size=window_size,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, spatial_dims=3, patch_norm=False,
            downsample_last=True, final_norm=False, clip_mode="truncate", stage_pre_layer=pre)
        self._make_decoder([info["num_chs"] for info in self.swinViT.feature_info], norm_name)
        view_free_instance_norms(self)  # same function and keys, no backward copies of the full-res maps
        self.num_features = feature_size
        first = ["swinViT.patch_embed.proj"] + [k[:-len(".weight")] for k in self.state_dict()
                                                  if k.startswith("encoder1.") and k.endswith("conv.weight")
                                                  and self.get_parameter(k).shape[1] == in_chans]
        self.pretrained_cfg: Dict[str, Any] = dict(input_size=(in_chans, *self.img_size), first_conv=tuple(first),
                                                   classifier="out.conv.conv", mean=(0.0,) * in_chans,
                                                   std=(1.0,) * in_chans, interpolation="trilinear")

    def _make_decoder(self, chans: List[int], norm_name: Union[str, tuple]) -> None:
        """``encoder1`` on the input, ``encoder{k+2}`` on level ``k < n-1``, ``encoder10`` on level ``n``, and
        ``decoder{k+1}`` joining level ``k``'s skip (``n`` stages, ``n + 1`` levels)."""
        n, f = self.num_stages, chans[0]
        self.encoder1 = UnetrBasicBlock(3, self.in_chans, f, kernel_size=3, stride=1, norm_name=norm_name,
                                        res_block=True)
        for k in range(n - 1):
            self.add_module(f"encoder{k + 2}", UnetrBasicBlock(3, chans[k], chans[k], kernel_size=3, stride=1,
                                                               norm_name=norm_name, res_block=True))
        self.add_module(_BOTTLENECK, UnetrBasicBlock(3, chans[n], chans[n], kernel_size=3, stride=1,
                                                     norm_name=norm_name, res_block=True))
        for k in range(n, -1, -1):
            out_ch = chans[k - 1] if k else f
            self.add_module(f"decoder{k + 1}", UnetrUpBlock(3, chans[k], out_ch, kernel_size=3,
                                                            upsample_kernel_size=2, norm_name=norm_name,
                                                            res_block=True))
        self.out = UnetOutBlock(3, f, self.num_classes)

    # ---------------------------------------------------------------------------------------------- weights
    def load_pretrained(self, src: Any) -> LoadReport:
        """Load a whole network (MONAI ``SwinUNETR`` or vtk checkpoint) or encoder-only weights (SSL
        ``model_swinvit.pt``, a MONAI/vtk Swin encoder) and return the report; the decoder stays at init in the
        second case. Any encoder weight the file lacks, or a file with no encoder key, raises ``UserError``."""
        sd = read_checkpoint(src)
        whole = any(k.startswith(_DECODER_KEYS) or k.startswith(tuple("module." + p for p in _DECODER_KEYS))
                    for k in sd)
        if whole:
            return load_pretrained(self, src, SWIN_UNETR_CONVERTERS)
        report = load_pretrained(self.swinViT, src, SWIN_UNETR_ENCODER_CONVERTERS)
        for name in ("loaded_keys", "created", "kept_init"):  # this network's key names
            setattr(report, name, [f"swinViT.{k}" for k in getattr(report, name)])
        report.kept_init += [k for k in self.state_dict() if not k.startswith("swinViT.")]  # the decoder
        _logger.info("swin_unetr: %s", report)
        return report

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Builder hook: fit the ``swinViT.*`` part (stored buffers, bias tables of another window)."""
        enc = self.swinViT.adapt_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("swinViT.")})
        out = {k: v for k, v in sd.items() if not k.startswith("swinViT.")}
        out.update({f"swinViT.{k}": v for k, v in enc.items()})
        return out

    # ------------------------------------------------------------------------------------------------ forward
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each Swin block in the backward pass."""
        self.swinViT.set_grad_checkpointing(enable)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[IntOrSeq] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCDHW",
                              intermediates_only: bool = False) -> Any:
        """Encoder levels ``(B, C, d, h, w)``; timm's signature, arguments as
        :meth:`SwinTransformer.forward_intermediates` (``norm`` is the encoder's final norm, an identity here:
        MONAI's ``normalize`` belongs to the decoder input).

        Returns:
            The list, or ``(final, list)`` with ``final`` the decoder features of :meth:`forward_features` (one
            encoder pass for both), so ``forward_head(final) == forward(x)``.
        """
        if intermediates_only:
            return self.swinViT.forward_intermediates(x, indices, norm=norm, stop_early=stop_early,
                                                      output_fmt=output_fmt, intermediates_only=True)
        take, _ = take_indices(len(self.swinViT.feature_info), indices)
        self._check_input(x)
        levels = self.swinViT.forward_levels(x)  # n + 1 levels (B, d, h, w, C)
        return self._decode(x, levels), self.swinViT.format_levels(levels, take, norm, output_fmt)

    def _check_input(self, x: torch.Tensor) -> None:
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} must be divisible by {self.divisor}")

    def _decode(self, x: torch.Tensor, levels: List[torch.Tensor]) -> torch.Tensor:
        """Input and the ``n + 1`` raw encoder levels ``(B, d, h, w, C)`` -> ``(B, feature_size, D, H, W)``;
        the levels are LayerNorm-ed over channels first when ``normalize``."""
        if self.normalize:
            levels = [F.layer_norm(f, f.shape[-1:]) for f in levels]
        cl = decoder_channels_last(x)  # bf16 on CPU: every decoder map channels-last, as the levels already are
        feats = [f.movedim(-1, 1) if cl else f.movedim(-1, 1).contiguous() for f in levels]  # (B, C, d, h, w)
        if cl:
            x = to_channels_last(x)  # (B, C_in, D, H, W)
        n = self.num_stages
        skips = [self.encoder1(x)] + [getattr(self, f"encoder{k + 2}")(feats[k]) for k in range(n - 1)] + [feats[n - 1]]
        y = getattr(self, _BOTTLENECK)(feats[n])
        for k in range(n, -1, -1):
            y = getattr(self, f"decoder{k + 1}")(y, skips[k])  # (B, f * 2^(k-1), ...) at stride 2^k
        return y

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W)`` -> decoder features ``(B, feature_size, D, H, W)``."""
        self._check_input(x)
        return self._decode(x, self.swinViT.forward_levels(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, f, D, H, W)`` -> logits ``(B, num_classes, D, H, W)``."""
        return x if pre_logits else self.out(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x).contiguous()  # NCDHW whatever the decoder's memory format


def _build(pretrained: Optional[Any] = None, **kwargs: Any) -> SwinUNETR:
    if pretrained is True:
        raise UserError("pretrained=True: vtk does not download weights; pass a checkpoint path or state dict")
    model = SwinUNETR(**kwargs)
    if pretrained is not None and pretrained is not False:
        model.load_pretrained(pretrained)
    return model


@register_model(tiny=dict(img_size=32, feature_size=12, depths=(1, 1, 1), num_heads=(3, 6, 12)),
                meta=dict(input_size=(1, 96, 96, 96), spatial_dims=3, protocol=dict(dataset='btcv', roi=(96, 96, 96),
                spacing=(1.5, 1.5, 2.0), a_min=-175.0, a_max=250.0, num_classes=14)), aliases=('swinunetr',))
def swin_unetr(pretrained: Optional[Any] = None, **overrides: Any) -> SwinUNETR:
    """Swin-UNETR-B at the paper config: 96^3 ROI, patch 2, window 7, depths (2, 2, 2, 2), heads (3, 6, 12, 24),
    feature size 48, 14 BTCV classes (62.2M parameters; ``feature_size=24`` / ``12`` give Small / Tiny).
    ``pretrained`` takes a MONAI ``SwinUNETR`` state dict or file, a vtk checkpoint, or the SSL encoder
    weights ``model_swinvit.pt``."""
    return _build(pretrained, **overrides)

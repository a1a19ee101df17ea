"""STAM: a spatial ViT on each frame, then a temporal transformer over the frames' class tokens.

Sharir, Noy and Zelnik-Manor, "An Image is Worth 16x16 Words, What is a Video Worth?", arXiv:2103.13915. As in
the official code (Alibaba-MIIL/STAM ``TAggregate``), the temporal part is a 6-layer post-norm
``nn.TransformerEncoder`` (d=768, 8 heads, FFN 2048, ReLU, dropout 0.1, final LayerNorm) with its own class token
and a learned ``(1, T + 1, D)`` position table; the classifier reads its class token.

STAM is a :class:`~videovit.nets.factorised.FactorisedVideoEncoder` of the backbones ViT (spatial) and
:class:`TemporalAggregate` (temporal). Dataflow::

    video (B, C, T, H, W) -> frames (B*T, C, H, W)          [in chunks of frame_chunk_size]
      -> ViT-B/16 (our backbones ViT, timm key names) -> frame class tokens   (B, T, D)
      -> aggregate: [cls] + pos_embed -> TransformerEncoder x6 -> LayerNorm   (B, 1 + T, D)
      -> class token -> dropout -> head                                        (B, num_classes)

Key names equal the official STAM checkpoints' (spatial ViT at the top level, ``aggregate.*``, ``head``) and the
defaults are the official configuration (``src/models/transformer_model.py``: ViT-B/16 without qkv bias,
PyTorch's LayerNorm eps 1e-5, exact GELU), so official checkpoints (``{'model': state_dict}``) load natively with
the defaults. The official ``stam_16``/``stam_32``/``stam_64`` differ only in ``num_frames``; ``stam_8`` is the
8-frame configuration of the paper's frame-count ablation. A timm ViT state dict initialises the spatial part
when the model is built with the timm ViT's configuration, ``qkv_bias=True, norm_eps=1e-6`` (``aggregate.*``
stays at init; the 1000-class head is dropped).

Example::

    >>> import videovit
    >>> net = videovit.create_model("stam_16", pretrained="stam_16.pth")  # official checkpoint
    >>> net = videovit.create_model("stam_16", pretrained="vit_base_patch16_224.pth", qkv_bias=True, norm_eps=1e-6,
    ...                             num_classes=400)  # timm ImageNet ViT -> spatial part
    >>> net(torch.randn(1, 3, 16, 224, 224)).shape
    torch.Size([1, 400])
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from backbones._builder import build_model
from backbones.models.vit import VisionTransformer
from videovit import register_model
from videovit.convert import STAM_CONVERTERS
from videovit.nets.factorised import FactorisedVideoEncoder, fit_time_table

__all__ = ["STAM", "TemporalAggregate", "stam_8", "stam_16", "stam_32", "stam_64"]


class TemporalAggregate(nn.Module):
    """STAM's temporal transformer over frame embeddings (official ``TAggregate`` layout).

    Args:
        num_frames: Clip length ``T`` of the position table (other lengths are resampled linearly).
        embed_dim: Width ``D``.
        depth: Encoder layers (6 in STAM).
        num_heads: Heads (8, PyTorch's ``nn.TransformerEncoderLayer`` in STAM).
        mlp_dim: Feed-forward width (2048, the PyTorch default STAM kept).
        dropout: Dropout inside the encoder layers (0.1, PyTorch's default).
    """

    def __init__(self, num_frames: int, embed_dim: int = 768, depth: int = 6, num_heads: int = 8,
                 mlp_dim: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"temporal embed_dim {embed_dim} should be divisible by temporal_heads {num_heads}")
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, mlp_dim, dropout, batch_first=True)
        self.transformer_enc = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(embed_dim),
                                                     enable_nested_tensor=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_frames + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.transformer_enc.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)`` frame embeddings -> ``(B, 1 + T, D)`` (class token first)."""
        B, T, D = x.shape
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + fit_time_table(self.pos_embed, T, 1)
        return self.transformer_enc(x)  # (B, 1 + T, D)


class STAM(FactorisedVideoEncoder):
    """STAM video classifier (input ``(B, C, T, H, W)``): a :class:`~videovit.nets.factorised.FactorisedVideoEncoder`
    of the backbones ViT (per frame, flattened: timm keys at the top level) and :class:`TemporalAggregate`
    (``aggregate.*``, which holds its own class token and position table); the head reads the temporal class token.

    Args:
        num_frames: Frames per clip (16 or 64 in the paper, sampled uniformly over the whole video).
        num_classes: Classes (0: ``forward`` returns the temporal class token).
        temporal_depth: Temporal encoder layers.
        temporal_heads: Temporal encoder heads.
        temporal_mlp_dim: Temporal feed-forward width.
        temporal_dropout: Dropout in the temporal encoder.
        frame_chunk_size: Frames per spatial forward pass (``None``: all frames at once when gradients are on,
            chunks of 32 under ``torch.no_grad()``).
        qkv_bias: Bias on the spatial ViT's qkv (False, as the official STAM ViT; True for timm/Google ViTs).
        norm_eps: The spatial ViT's LayerNorm epsilon (1e-5, PyTorch's default used by STAM; 1e-6 for timm).
        **vit_kwargs: Other spatial ViT arguments (``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
            ``num_heads``, ``drop_rate`` (before the head), ``drop_path_rate``, ...).
    """

    def __init__(self, num_frames: int = 16, num_classes: int = 400, temporal_depth: int = 6,
                 temporal_heads: int = 8, temporal_mlp_dim: int = 2048, temporal_dropout: float = 0.1,
                 frame_chunk_size: Optional[int] = None, qkv_bias: bool = False, norm_eps: float = 1e-5,
                 **vit_kwargs: Any) -> None:
        vit = VisionTransformer(num_classes=num_classes, global_pool="token", qkv_bias=qkv_bias, norm_eps=norm_eps,
                                **vit_kwargs)
        self.check_frames(num_frames, frame_chunk_size)
        aggregate = TemporalAggregate(num_frames, vit.embed_dim, temporal_depth, temporal_heads, temporal_mlp_dim,
                                      temporal_dropout)
        super().__init__(vit, aggregate, num_frames=num_frames, num_classes=num_classes, temporal_name="aggregate",
                         head=vit.head, drop_rate=vit.head_drop.p, frame_chunk_size=frame_chunk_size,
                         eval_chunk_size=32)
        self.pretrained_ignore_keys += ("aggregate.*",)

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Spatial table resampled by the ViT; the temporal table resampled to ``num_frames``.

        Raises:
            ValueError: The checkpoint has qkv biases (a timm/Google ViT) and this STAM has none (the default).
        """
        has_bias = any(k.startswith("blocks.") and k.endswith(".attn.qkv.bias") for k in sd)
        if has_bias and self.blocks[0].attn.qkv.bias is None:
            raise ValueError("the checkpoint's ViT has qkv biases (a timm/Google ViT); STAM's defaults are the "
                             "official STAM ViT's (no qkv bias): build it with qkv_bias=True, norm_eps=1e-6")
        sd = super().adapt_state_dict(sd)
        pos = sd.get("aggregate.pos_embed")
        if pos is not None:
            sd["aggregate.pos_embed"] = fit_time_table(pos, self.num_frames, 1)
        return sd


_VIT_B = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_frames=4, temporal_depth=1,
             temporal_heads=2, temporal_mlp_dim=64, num_classes=10)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 8, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=8, protocol=dict(stride=0, crop_size=224, short_side=256, views='1x1')))
def stam_8(pretrained: Optional[Any] = None, **overrides: Any) -> STAM:
    """STAM-8: ViT-B/16 per frame + 6-layer temporal transformer, 8 frames per video (the paper's frame ablation)."""
    return build_model(STAM, pretrained, STAM_CONVERTERS, **{**_VIT_B, "num_frames": 8, **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 16, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=16, protocol=dict(stride=0, crop_size=224, short_side=256, views='1x1')),
                aliases=('stam',))
def stam_16(pretrained: Optional[Any] = None, **overrides: Any) -> STAM:
    """STAM-16 (K400 79.3 top-1, ~119M params): ViT-B/16 per frame + 6-layer temporal transformer, 16 frames."""
    return build_model(STAM, pretrained, STAM_CONVERTERS, **{**_VIT_B, "num_frames": 16, **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 32, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=32, protocol=dict(stride=0, crop_size=224, short_side=256, views='1x1')))
def stam_32(pretrained: Optional[Any] = None, **overrides: Any) -> STAM:
    """STAM-32: as STAM-16 with 32 frames per video (the official ``stam_32``)."""
    return build_model(STAM, pretrained, STAM_CONVERTERS, **{**_VIT_B, "num_frames": 32, **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 64, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=64, protocol=dict(stride=0, crop_size=224, short_side=256, views='1x1')))
def stam_64(pretrained: Optional[Any] = None, **overrides: Any) -> STAM:
    """STAM-64 (K400 80.5 top-1): as STAM-16 with 64 frames per video."""
    return build_model(STAM, pretrained, STAM_CONVERTERS, **{**_VIT_B, "num_frames": 64, **overrides})

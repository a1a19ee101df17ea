"""STAM: a spatial ViT on each frame, then a temporal transformer over the frames' class tokens.

Sharir, Noy and Zelnik-Manor, "An Image is Worth 16x16 Words, What is a Video Worth?", arXiv:2103.13915. As in
the official code (Alibaba-MIIL/STAM ``TAggregate``), the temporal part is a 6-layer post-norm
``nn.TransformerEncoder`` (d=768, 8 heads, FFN 2048, ReLU, dropout 0.1, final LayerNorm) with its own class token
and a learned ``(1, T + 1, D)`` position table; the classifier reads its class token.

Dataflow::

    video (B, C, T, H, W) -> frames (B*T, C, H, W)          [in chunks of frame_chunk_size]
      -> ViT-B/16 (our backbones ViT, timm key names) -> frame class tokens   (B, T, D)
      -> aggregate: [cls] + pos_embed -> TransformerEncoder x6 -> LayerNorm   (B, 1 + T, D)
      -> class token -> dropout -> head                                        (B, num_classes)

Key names equal the official STAM checkpoints' (spatial ViT at the top level, ``aggregate.*``, ``head``), so they
load natively (pass ``qkv_bias=False, norm_eps=1e-5``: the official ViT has no qkv bias and PyTorch's default
LayerNorm eps). A timm ViT state dict initialises the spatial part (``aggregate.*`` stays at init; the 1000-class
head is dropped).

Example::

    >>> import videovit
    >>> net = videovit.create_model("stam_16", pretrained="vit_base_patch16_224.pth", num_classes=400)
    >>> net(torch.randn(1, 3, 16, 224, 224)).shape
    torch.Size([1, 400])
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from backbones._builder import build_model
from backbones.layers import resample_time_embed
from backbones.models.vit import VisionTransformer
from videovit import register_model
from videovit.convert import STAM_CONVERTERS

__all__ = ["FrameViT", "STAM", "TemporalAggregate", "stam_16", "stam_64"]


class FrameViT(VisionTransformer):
    """A 2D ViT applied to every frame of a video ``(B, C, T, H, W)``; base of STAM and VTN.

    Subclasses add a temporal model over the per-frame class tokens (``encode_frames``) and override
    ``forward_features``/``forward_head``. Keys are the 2D ViT's (timm names), so image-ViT weights load as is.

    Args:
        num_frames: Default clip length (sizes the temporal position table of subclasses).
        frame_chunk_size: Frames per spatial forward pass (bounds activation memory for long videos);
            ``None`` runs all ``B*T`` frames at once when gradients are on, and chunks of ``eval_chunk_size``
            (32) frames under ``torch.no_grad()``, so evaluation on whole videos has bounded memory.
        **vit_kwargs: :class:`~backbones.models.vit.VisionTransformer` arguments.
    """

    def __init__(self, num_frames: int = 16, frame_chunk_size: Optional[int] = None, **vit_kwargs: Any) -> None:
        super().__init__(**vit_kwargs)
        if num_frames < 1 or (frame_chunk_size is not None and frame_chunk_size < 1):
            raise ValueError(f"num_frames ({num_frames}) and frame_chunk_size ({frame_chunk_size}) must be >= 1")
        self.num_frames = num_frames
        self.frame_chunk_size = frame_chunk_size
        self.eval_chunk_size = 32
        in_chans = self.pretrained_cfg["input_size"][0]
        self.pretrained_cfg.update(input_size=(in_chans, num_frames) + tuple(self.img_size), num_frames=num_frames)

    @staticmethod
    def _frames(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected video (B, C, T, H, W), got shape {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        return x.transpose(1, 2).reshape(B * T, C, H, W)  # (B*T, C, H, W)

    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> per-frame class tokens after the ViT's final norm ``(B, T, D)``."""
        B, T = x.shape[0], x.shape[2]
        frames = self._frames(x)
        chunk = self.frame_chunk_size or (frames.shape[0] if torch.is_grad_enabled() else self.eval_chunk_size)
        cls = [VisionTransformer.forward_features(self, f)[:, 0] for f in frames.split(chunk)]  # (b, D) each
        return torch.cat(cls).reshape(B, T, -1)  # (B, T, D)

    def forward_intermediates(self, x: torch.Tensor, indices: Union[None, int, Sequence[int]] = None,
                              output_fmt: Optional[str] = None, norm: bool = False, return_prefix_tokens: bool = False,
                              stop_early: bool = False, return_final: bool = False) -> Any:
        """Per-frame outputs of selected spatial blocks.

        Args:
            x: Video ``(B, C, T, H, W)``.
            indices: ``None`` = every block, int ``n`` = the last ``n`` blocks, or a list of block indices.
            output_fmt: ``"NCTHW"`` (default) feature maps ``(B, D, T, h, w)`` or ``"NLC"`` tokens
                ``(B, T*N, D)`` in ``(t, h, w)`` order.
            norm, return_prefix_tokens, stop_early: As :meth:`VisionTransformer.forward_intermediates`; prefix
                tokens come back as ``(B, T, P, D)``.
            return_final: Also return the final features of :meth:`forward_features`.
        """
        fmt = output_fmt or "NCTHW"
        if fmt not in ("NCTHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCTHW' or 'NLC', got {fmt!r}")
        B, T = x.shape[0], x.shape[2]
        outs = super().forward_intermediates(self._frames(x), indices, return_prefix_tokens, norm, stop_early,
                                             "NLC", intermediates_only=True)  # each (B*T, N, D)
        res = [self._to_video(o, B, T, fmt, return_prefix_tokens) for o in outs]
        return (self.forward_features(x), res) if return_final else res

    def _to_video(self, o: Any, B: int, T: int, fmt: str, with_prefix: bool) -> Any:
        tok, prefix = o if with_prefix else (o, None)
        BT, N, D = tok.shape
        tok = tok.reshape(B, T * N, D)  # (B, T*N, D)
        if fmt == "NCTHW":
            tok = tok.transpose(1, 2).reshape(B, D, T, *self.grid_size)  # (B, D, T, h, w)
        return (tok, prefix.reshape(B, T, -1, D)) if with_prefix else tok


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
        pos = self.pos_embed
        if T + 1 != pos.shape[1]:
            pos = torch.cat([pos[:, :1], resample_time_embed(pos[:, 1:], T)], dim=1)  # (1, 1 + T, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + pos  # (B, 1 + T, D)
        return self.transformer_enc(x)


class STAM(FrameViT):
    """STAM video classifier (input ``(B, C, T, H, W)``).

    Args:
        num_frames: Frames per clip (16 or 64 in the paper, sampled uniformly over the whole video).
        num_classes: Classes (0: ``forward`` returns the temporal class token).
        temporal_depth: Temporal encoder layers.
        temporal_heads: Temporal encoder heads.
        temporal_mlp_dim: Temporal feed-forward width.
        temporal_dropout: Dropout in the temporal encoder.
        frame_chunk_size: Frames per spatial forward pass (``None``: all at once).
        **vit_kwargs: Spatial ViT arguments (``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``,
            ``qkv_bias``, ``norm_eps``, ``drop_rate``, ``drop_path_rate``, ...).
    """

    def __init__(self, num_frames: int = 16, num_classes: int = 400, temporal_depth: int = 6,
                 temporal_heads: int = 8, temporal_mlp_dim: int = 2048, temporal_dropout: float = 0.1,
                 frame_chunk_size: Optional[int] = None, **vit_kwargs: Any) -> None:
        super().__init__(num_frames, frame_chunk_size, num_classes=num_classes, global_pool="token", **vit_kwargs)
        self.aggregate = TemporalAggregate(num_frames, self.embed_dim, temporal_depth, temporal_heads,
                                           temporal_mlp_dim, temporal_dropout)
        self.pretrained_ignore_keys = tuple(self.pretrained_ignore_keys) + ("aggregate.*",)

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Spatial table resampled by the ViT; the temporal table resampled to ``num_frames``."""
        sd = super().adapt_state_dict(sd)
        pos = sd.get("aggregate.pos_embed")
        if pos is not None and pos.shape[1] != self.num_frames + 1:
            sd["aggregate.pos_embed"] = torch.cat([pos[:, :1], resample_time_embed(pos[:, 1:], self.num_frames)], 1)
        return sd

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> temporal encoder tokens ``(B, 1 + T, D)``."""
        return self.aggregate(self.encode_frames(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, 1 + T, D)`` -> logits from the temporal class token (or the token itself)."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


_VIT_B = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_frames=4, temporal_depth=1,
             temporal_heads=2, temporal_mlp_dim=64, num_classes=10)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 16, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=16, protocol=dict(stride=0, crop_size=224, short_side=256, views='1x1')),
                aliases=('stam',))
def stam_16(pretrained: Optional[Any] = None, **overrides: Any) -> STAM:
    """STAM-16 (K400 79.3 top-1, ~119M params): ViT-B/16 per frame + 6-layer temporal transformer, 16 frames."""
    return build_model(STAM, pretrained, STAM_CONVERTERS, **{**_VIT_B, "num_frames": 16, **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 64, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=64, protocol=dict(stride=0, crop_size=224, short_side=256, views='1x1')))
def stam_64(pretrained: Optional[Any] = None, **overrides: Any) -> STAM:
    """STAM-64 (K400 80.5 top-1): as STAM-16 with 64 frames per video."""
    return build_model(STAM, pretrained, STAM_CONVERTERS, **{**_VIT_B, "num_frames": 64, **overrides})

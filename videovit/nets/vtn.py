"""VTN: Video Transformer Network (ViT-B per frame + Longformer temporal encoder).

Neimark, Bar, Zohar and Asselmann, "Video Transformer Network", arXiv:2102.00719. Following the official code
(bomri/SlowFast ``projects/vtn``, ``configs/Kinetics/VIT_B_VTN.yaml``): a timm ViT-B/16 embeds every frame (its
class token), a 3-layer HF-Longformer encoder (12 heads, MLP 3072, ``attention_window=18``, 288 position
embeddings, token types, post-norm LayerNorms with eps 1e-12) runs over ``[CLS] + frames`` with global attention
on the CLS token, and an MLP head (LayerNorm, Linear, GELU, Dropout 0.5, Linear) reads the CLS token.

Attention window: the paper reports 32, the released config uses 18 (the authors attribute the gap to moving
from the allenai to the HF Longformer, bomri/SlowFast#5); 18 is the default here and ``attention_window`` is an
override. The attention is :class:`~backbones.layers.local_global_attention.LocalGlobalAttention` (exact
Longformer semantics, dense mask for short clips, ``O(N * w)`` chunks for long videos).

Position ids are the frames' indices in the video (the official loader passes the sampled frame numbers); by
default ``0..T-1``. Row ``max_positions - 2`` is the CLS position and ``max_positions - 1`` the padding row, so
frame indices must be ``< max_positions - 2`` (286): beyond it ``pos_overflow="error"`` (default) raises a
``ValueError``, ``"wrap"`` takes them modulo 286 exactly as the official code does.

Dataflow::

    video (B, C, T, H, W) -> frames (B*T, C, H, W) in chunks -> ViT-B/16 -> class tokens   (B, T, D)
      -> [CLS] + frames, + position + token-type embeddings, LayerNorm                        (B, 1 + T, D)
      -> LocalGlobalEncoder x3 (window 18, CLS global)                                         (B, 1 + T, D)
      -> CLS -> mlp_head                                                                       (B, num_classes)

At evaluation the whole video is one clip of any length ``T <= 286``: frames go through the ViT in chunks of 32
under ``torch.no_grad()`` and the chunked local attention keeps the temporal cost linear in ``T``.

Example::

    >>> import videovit
    >>> net = videovit.create_model("vtn_vit_base", pretrained="vit_base_patch16_224.pth", num_classes=400)
    >>> net.eval()(torch.randn(1, 3, 250, 224, 224)).shape   # a whole 10 s video
    torch.Size([1, 400])
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from backbones._builder import build_model
from backbones.layers.local_global_attention import LocalGlobalEncoder
from backbones.models.vit import VisionTransformer
from videovit import register_model
from videovit.convert import VTN_CONVERTERS
from videovit.convert.vtn_official import convert_vtn_official  # re-exported (__all__)
from videovit.nets.factorised import FactorisedVideoEncoder

__all__ = ["VTN", "TemporalEmbedding", "convert_vtn_official", "vtn_vit_base"]

POS_OVERFLOW = ("error", "wrap")


class TemporalEmbedding(nn.Module):
    """Position + token-type embeddings, LayerNorm and dropout (HF ``LongformerEmbeddings`` on input embeds).

    Args:
        dim: Width.
        max_positions: Rows of the position table (288 in VTN: 286 frame positions, CLS, padding).
        norm_eps: LayerNorm epsilon (1e-12, HF's default that VTN kept).
        dropout: Dropout after the norm.
    """

    def __init__(self, dim: int, max_positions: int = 288, norm_eps: float = 1e-12, dropout: float = 0.1) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop = nn.Dropout(dropout)
        for e in (self.position_embeddings, self.token_type_embeddings):
            nn.init.normal_(e.weight, std=0.02)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 1 + T, D)`` with CLS first; ``position_ids`` ``(B, 1 + T)``."""
        types = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        types[:, 0] = 1  # the CLS token has token type 1, frames 0 (official VTN)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(types)
        return self.drop(self.norm(x))


class VTN(FactorisedVideoEncoder):
    """VTN video classifier (input ``(B, C, T, H, W)``, any ``T`` up to ``max_positions - 2``).

    A :class:`~videovit.nets.factorised.FactorisedVideoEncoder` of the backbones ViT (per frame, flattened: timm
    keys at the top level), ``temporal_cls_token``, :class:`TemporalEmbedding` (``temporal_embed``), a
    :class:`~backbones.layers.local_global_attention.LocalGlobalEncoder` (``temporal_encoder``) and the MLP head
    (``mlp_head``; ``pre_logits`` gives its hidden features).

    Args:
        num_classes: Classes of the MLP head (0: ``forward`` returns the CLS features).
        num_frames: Training clip length (16 in VTN's K400 recipe); only used for ``pretrained_cfg``.
        temporal_depth: Longformer layers (3).
        temporal_heads: Longformer heads (12).
        temporal_mlp_dim: Longformer intermediate width (3072).
        attention_window: Full local window (18 in the code, 32 in the paper).
        max_positions: Position-table rows (288).
        pos_overflow: ``"error"`` or ``"wrap"`` for frame indices ``>= max_positions - 2`` (see module doc).
        temporal_dropout: Hidden and attention dropout of the Longformer (0.1).
        head_dropout: Dropout in the MLP head (0.5).
        temporal_norm_eps: LayerNorm eps of the temporal encoder (1e-12).
        attn_mode: ``"auto"``, ``"dense"`` or ``"chunked"`` local attention.
        frame_chunk_size: Frames per spatial pass (``None``: all at once with gradients, 32 under no_grad).
        **vit_kwargs: Spatial ViT arguments (``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ...).
    """

    def __init__(self, num_classes: int = 400, num_frames: int = 16, temporal_depth: int = 3,
                 temporal_heads: int = 12, temporal_mlp_dim: int = 3072, attention_window: int = 18,
                 max_positions: int = 288, pos_overflow: str = "error", temporal_dropout: float = 0.1,
                 head_dropout: float = 0.5, temporal_norm_eps: float = 1e-12, attn_mode: str = "auto",
                 frame_chunk_size: Optional[int] = None, **vit_kwargs: Any) -> None:
        vit = VisionTransformer(num_classes=0, global_pool="token", **vit_kwargs)
        if pos_overflow not in POS_OVERFLOW or max_positions < 3:
            raise ValueError(f"pos_overflow must be one of {POS_OVERFLOW} and max_positions >= 3, got "
                             f"{pos_overflow!r}, {max_positions}")
        D = vit.embed_dim
        embed = TemporalEmbedding(D, max_positions, temporal_norm_eps, temporal_dropout)
        encoder = LocalGlobalEncoder(
            D, temporal_depth, temporal_heads, attention_window, temporal_mlp_dim, num_global_tokens=1,
            proj_drop=temporal_dropout, attn_drop=temporal_dropout,
            norm_layer=partial(nn.LayerNorm, eps=temporal_norm_eps), attn_mode=attn_mode)
        mlp_head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D), nn.GELU(), nn.Dropout(head_dropout),
                                 nn.Linear(D, num_classes) if num_classes > 0 else nn.Identity())
        encoder.apply(self._init_linear)
        mlp_head.apply(self._init_linear)
        super().__init__(vit, encoder, num_frames=num_frames, num_classes=num_classes,
                         temporal_name="temporal_encoder", class_token=True, temporal_embed=embed, head=mlp_head,
                         head_name="mlp_head", frame_chunk_size=frame_chunk_size, eval_chunk_size=32)
        nn.init.normal_(self.temporal_cls_token)  # official: torch.randn
        self.max_positions, self.pos_overflow = max_positions, pos_overflow
        self.pretrained_cfg.update(classifier="mlp_head.4", num_classes=num_classes)
        self.pretrained_ignore_keys += ("temporal_*", "mlp_head.*")  # an image ViT initialises the spatial part only

    @staticmethod
    def _init_linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The spatial ViT's tables only: VTN's temporal CLS token has always been decayed."""
        return set(self.spatial_encoder.no_weight_decay())

    def _position_ids(self, position_ids: Optional[torch.Tensor], B: int, T: int, device: torch.device) -> torch.Tensor:
        """Frame indices ``(B, T)`` -> ``(B, 1 + T)`` table rows with the CLS row first."""
        limit = self.max_positions - 2
        if position_ids is None:
            position_ids = torch.arange(T, device=device).expand(B, T)
        if position_ids.shape != (B, T):
            raise ValueError(f"position_ids must have shape {(B, T)}, got {tuple(position_ids.shape)}")
        position_ids = position_ids.long()
        if self.pos_overflow == "wrap":
            position_ids = position_ids % limit
        elif position_ids.numel() and int(position_ids.max()) >= limit:
            raise ValueError(f"frame index {int(position_ids.max())} exceeds VTN's position table "
                             f"(max_positions={self.max_positions}: frame indices < {limit}); subsample the "
                             f"video or build the model with pos_overflow='wrap' (official behaviour)")
        cls = torch.full((B, 1), limit, dtype=torch.long, device=device)
        return torch.cat([cls, position_ids], dim=1)

    def forward_temporal(self, x: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                         frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Frame embeddings ``(B, T, D)`` -> temporal tokens ``(B, 1 + T, D)``.

        ``forward_features(x, position_ids, frame_mask)`` and ``forward(x, position_ids, frame_mask)`` pass the
        two optional arguments here.

        Args:
            x: Frame embeddings ``(B, T, D)``.
            position_ids: Optional frame indices ``(B, T)`` (default ``0..T-1``).
            frame_mask: Optional bool ``(B, T)``, True at padding frames: videos of different lengths padded to one
                ``T`` in a batch; no token attends to them, so each video's CLS output equals its unpadded one.
        """
        B, T, D = x.shape
        pad = None
        if frame_mask is not None:
            if frame_mask.shape != (B, T):
                raise ValueError(f"frame_mask must have shape {(B, T)}, got {tuple(frame_mask.shape)}")
            pad = torch.cat([frame_mask.new_zeros(B, 1), frame_mask], dim=1).bool()  # (B, 1 + T), CLS never padded
        x = self._add_temporal_tokens(x)  # (B, 1 + T, D)
        x = self.temporal_embed(x, self._position_ids(position_ids, B, T, x.device))
        return self.temporal_encoder(x, pad)


_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_frames=4, temporal_depth=1,
             temporal_heads=2, temporal_mlp_dim=64, attention_window=4, max_positions=40, num_classes=10)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 16, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=16, protocol=dict(stride=8, crop_size=224, short_side=224, views='1x1')),
                aliases=('vtn',))
def vtn_vit_base(pretrained: Optional[Any] = None, **overrides: Any) -> VTN:
    """ViT-B-VTN (114.0M params, K400 78.6 top-1 on full videos): ViT-B/16 per frame + 3-layer Longformer."""
    base = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_frames=16)
    return build_model(VTN, pretrained, VTN_CONVERTERS, **{**base, **overrides})

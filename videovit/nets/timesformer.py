"""TimeSformer: a ViT whose blocks attend over space and time.

Bertasius, Wang and Torresani, "Is Space-Time Attention All You Need for Video Understanding?", ICML 2021,
arXiv:2102.05095. The default is divided space-time attention (temporal then spatial attention in every block,
:class:`~backbones.layers.divided_st_attention.DividedSpaceTimeBlock`); ``attention_type`` also gives the paper's
``joint_space_time`` and ``space_only`` baselines.

Dataflow::

    video (B, C, T, H, W)
      -> per-frame patch_embed (Conv2d p x p)                          (B*T, N, D)
      -> + pos_embed (spatial, shared by frames), + time_embed (per frame)
      -> prepend one class token (+ pos_embed[0])                      (B, 1 + T*N, D)    [space_only: (B*T, 1+N, D)]
      -> blocks: x = blk(x, thw)                                       divided | joint | per-frame attention
      -> [space_only: average the per-frame class tokens]  -> norm -> class token -> head   (B, num_classes)

Tokens are ordered ``(t, h, w)``. Key names are the official repo's (timm's ViT names plus ``time_embed``,
``blocks.i.temporal_norm1``, ``blocks.i.temporal_attn.{qkv,proj}``, ``blocks.i.temporal_fc``), so official
checkpoints, HF ``TimesformerForVideoClassification`` state dicts and timm ImageNet ViTs load through
``videovit/convert`` (``timesformer_official.py``, ``hf_timesformer.py``) or the timm ViT converter, plus
:meth:`TimeSformer.adapt_state_dict` (temporal attention copied from the spatial one, ``temporal_fc`` zero, as the
official ``helpers.load_pretrained``).

Example::

    >>> import videovit
    >>> net = videovit.create_model("timesformer_base_patch16_224", num_classes=400)
    >>> net(torch.randn(1, 3, 8, 224, 224)).shape
    torch.Size([1, 400])
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from backbones._builder import load_pretrained
from backbones.layers import PatchEmbed, grid_shape, resample_pos_embed, resample_time_embed, to_ntuple
from backbones.layers.divided_st_attention import DividedSpaceTimeBlock, SpaceTimeBlock
from engine.choices import check_choice
from videovit import register_model
from videovit.convert import TIMESFORMER_CONVERTERS
from videovit.nets._video_vit import VideoTokenMixin, tokens_to_map

__all__ = ["TimeSformer", "ATTENTION_TYPES", "tokens_to_map",
           "timesformer_base_patch16_224", "timesformer_hr_patch16_448", "timesformer_l_patch16_224"]

Thw = Tuple[int, int, int]
ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")
_TEMPORAL_KEY = re.compile(r"blocks\.(\d+)\.temporal_")


def _temporal_block(key: str) -> Optional[int]:
    """Block index of a ``blocks.i.temporal_*`` key, else ``None``."""
    m = _TEMPORAL_KEY.match(key)
    return None if m is None else int(m[1])


class TimeSformer(VideoTokenMixin, nn.Module):
    """TimeSformer video classifier (input ``(B, C, T, H, W)``).

    Args:
        img_size: Training frame size (sets the ``pos_embed`` grid; other sizes are resampled on the fly).
        patch_size: Square patch size.
        in_chans: Input channels.
        num_classes: Classes of the head (0: ``forward`` returns pooled features).
        num_frames: Training clip length (sets ``time_embed``; other lengths are resampled on the fly).
        embed_dim: Token width ``D``.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width multiple.
        qkv_bias: Bias on qkv.
        drop_rate: Dropout after the position embeddings and before the head.
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth, linearly increasing over blocks (0.1 in the official recipe).
        attention_type: ``"divided_space_time"``, ``"joint_space_time"`` or ``"space_only"``.
        global_pool: ``"token"`` (class token, official) or ``"avg"`` (mean of the patch tokens).
        norm_layer: Norm class (default ``LayerNorm(eps=1e-6)``).
        act_layer: MLP activation class (default ``nn.GELU``).
        block_fn: Block class called as ``block_fn(dim, num_heads, mlp_ratio=, ...)`` and ``blk(x, thw)``;
            default from ``attention_type``.
        time_init_std: Standard deviation of the truncated-normal ``time_embed`` of a model trained from scratch
            (default 1.0, the scale of the patch tokens; 0 gives the official zeros, which only work when
            initialising from an image ViT, see ``_init_weights``).
        weight_init: Init of the linear layers of a model trained from scratch: ``"jax"`` (default; Xavier-uniform
            as in the original JAX ViT and timm's ``jax`` mode, which scales with the width) or ``"timm"``
            (trunc-normal 0.02, the official TimeSformer's, calibrated for width 768). Pretrained weights replace
            either.
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 400, num_frames: int = 8, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 attention_type: str = "divided_space_time", global_pool: str = "token",
                 norm_layer: Optional[Type[nn.Module]] = None, act_layer: Optional[Type[nn.Module]] = None,
                 block_fn: Optional[Type[nn.Module]] = None, time_init_std: float = 1.0,
                 weight_init: str = "jax") -> None:
        super().__init__()
        if time_init_std < 0:
            raise ValueError(f"time_init_std ({time_init_std}) must be >= 0")
        self.time_init_std = time_init_std
        self.weight_init = check_choice("weight_init", weight_init, ("jax", "timm"), error=ValueError)
        self.attention_type = check_choice("attention_type", attention_type, ATTENTION_TYPES, error=ValueError)
        self.global_pool = check_choice("global_pool", global_pool, ("token", "avg"), error=ValueError)
        if num_frames < 1 or depth < 1:
            raise ValueError(f"num_frames ({num_frames}) and depth ({depth}) must be >= 1")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        img = to_ntuple(img_size, 2, "img_size")
        self.num_classes, self.num_frames = num_classes, num_frames
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img, patch_size, in_chans, embed_dim, spatial_dims=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        space_only = attention_type == "space_only"
        self.time_embed = None if space_only else nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = self._make_blocks(block_fn, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_rate,
                                        attn_drop_rate, drop_path_rate, norm_layer, act_layer or nn.GELU)
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg: Dict[str, Any] = dict(
            input_size=(in_chans, num_frames) + img, num_frames=num_frames, first_conv="patch_embed.proj",
            classifier="head", mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
        self.pretrained_ignore_keys: Tuple[str, ...] = ()
        self._init_weights()

    def _make_blocks(self, block_fn: Optional[Type[nn.Module]], dim: int, depth: int, num_heads: int,
                     mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float, drop_path_rate: float,
                     norm_layer: Type[nn.Module], act_layer: Type[nn.Module]) -> nn.ModuleList:
        if block_fn is None:
            block_fn = DividedSpaceTimeBlock if self.attention_type == "divided_space_time" else SpaceTimeBlock
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        return nn.ModuleList([
            block_fn(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop, attn_drop=attn_drop,
                     drop_path=dpr[i], norm_layer=norm_layer, act_layer=act_layer)
            for i in range(depth)])

    def _init_weights(self) -> None:
        """Init for training from scratch; every ``temporal_fc`` starts at zero (official).

        Two choices differ from the official trunc-normal 0.02 / zero ``time_embed``, because both make a small
        TimeSformer trained from scratch blind to the *direction* of motion for hundreds of steps (it learns the
        axis, then sits at loss ln 2 on the time-symmetric plateau; docs/videovit.md, proof of temporal modelling):

        * ``time_embed`` is trunc-normal with ``time_init_std`` (1.0). A zero ``time_embed`` makes divided
          space-time attention exactly invariant to frame order; at 0.02 the frame index is ~3% of a patch token
          (the patch projection gives tokens of std ~0.6).
        * Linear layers are Xavier-uniform (``weight_init="jax"``, the original ViT's), whose scale follows the
          width. Trunc-normal 0.02 equals Xavier at width 768 but is 4-6x too cold at width 64, so order-dependent
          temporal attention starts as a product of tiny terms.

        With both, a tiny TimeSformer passes 90% on the motion set in a few hundred steps; with either alone it
        stays near 50% in most seeds. Loading an image ViT still gives a zero ``time_embed`` as in the official
        code (``adapt_state_dict``); any loaded checkpoint replaces the rest.
        """
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.time_embed is not None and self.time_init_std > 0:
            std = self.time_init_std
            nn.init.trunc_normal_(self.time_embed, std=std, a=-2 * std, b=2 * std)  # else zeros (official)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if self.weight_init == "jax" and name != "head":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:
            if isinstance(blk, DividedSpaceTimeBlock):
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token", "time_embed"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Fit a converted checkpoint (ours, official, HF or an image ViT) to this model's grid and attention.

        Resamples ``pos_embed`` to the patch grid and ``time_embed`` to ``num_frames``; for an image ViT adds a
        zero ``time_embed`` and, in divided blocks, copies ``norm1``/``attn`` into ``temporal_norm1``/
        ``temporal_attn`` with a zero ``temporal_fc`` (official ``helpers.load_pretrained`` + model init).
        Temporal weights are dropped for ``joint_space_time``/``space_only`` models.
        """
        sd = dict(sd)
        if "pos_embed" in sd and sd["pos_embed"].shape[1] != self.pos_embed.shape[1]:
            old = grid_shape(sd["pos_embed"].shape[1] - 1, 2)
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], self.patch_embed.grid_size, old, 1)
        if self.time_embed is None:
            sd.pop("time_embed", None)
        else:
            te = sd.get("time_embed", torch.zeros_like(self.time_embed))
            sd["time_embed"] = resample_time_embed(te, self.num_frames)
        divided = {i for i, b in enumerate(self.blocks) if isinstance(b, DividedSpaceTimeBlock)}
        for i in sorted(divided):
            self._add_temporal_weights(sd, f"blocks.{i}.")
        return {k: v for k, v in sd.items() if _temporal_block(k) in divided | {None}}

    def _add_temporal_weights(self, sd: Dict[str, torch.Tensor], p: str) -> None:
        for src, dst in (("norm1.", "temporal_norm1."), ("attn.", "temporal_attn.")):
            if not any(k.startswith(p + dst) for k in sd):
                sd.update({p + dst + k[len(p + src):]: v.clone() for k, v in list(sd.items()) if k.startswith(p + src)})
        fc = self.blocks[int(p.split(".")[1])].temporal_fc
        sd.setdefault(p + "temporal_fc.weight", torch.zeros_like(fc.weight))
        sd.setdefault(p + "temporal_fc.bias", torch.zeros_like(fc.bias))

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Thw]:
        """``(B, C, T, H, W)`` -> tokens ``(B, 1 + T*N, D)`` (``(B*T, 1 + N, D)`` for space_only) and ``thw``."""
        if x.ndim != 5:
            raise ValueError(f"expected video (B, C, T, H, W), got shape {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        x = self.patch_embed(x.transpose(1, 2).reshape(B * T, C, H, W))  # (B*T, N, D)
        ph, pw = self.patch_embed.patch_size
        thw = (T, H // ph, W // pw)
        pos = self.pos_embed
        if thw[1:] != self.patch_embed.grid_size:
            pos = resample_pos_embed(pos, thw[1:], self.patch_embed.grid_size, 1)
        cls = (self.cls_token + pos[:, :1]).expand(B * T if self.time_embed is None else B, -1, -1)  # (B', 1, D)
        x = x + pos[:, 1:]
        if self.time_embed is not None:
            D = x.shape[-1]
            x = x.reshape(B, T, -1, D) + resample_time_embed(self.time_embed, T)[:, :, None]  # (B, T, N, D)
            x = x.reshape(B, -1, D)  # (B, T*N, D)
        return self.pos_drop(torch.cat([cls, x], dim=1)), thw

    def _to_clip(self, x: torch.Tensor, thw: Thw) -> torch.Tensor:
        """space_only ``(B*T, 1 + N, D)`` -> ``(B, 1 + T*N, D)`` with the frame-averaged class token."""
        if self.time_embed is not None:
            return x
        T = thw[0]
        BT, L, D = x.shape
        x = x.reshape(BT // T, T, L, D)  # (B, T, 1+N, D)
        return torch.cat([x[:, :, :1].mean(dim=1), x[:, :, 1:].reshape(BT // T, T * (L - 1), D)], dim=1)


def _create_timesformer(pretrained: Optional[Any], **kwargs: Any) -> TimeSformer:
    model = TimeSformer(**kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained, TIMESFORMER_CONVERTERS)
    return model


_TINY = dict(img_size=32, patch_size=8, num_frames=4, embed_dim=32, depth=2, num_heads=2, num_classes=10)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 8, 224, 224), mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225),
                num_frames=8, protocol=dict(stride=32, crop_size=224, short_side=224, views='1x3')),
                aliases=('timesformer',))
def timesformer_base_patch16_224(pretrained: Optional[Any] = None, **overrides: Any) -> TimeSformer:
    """TimeSformer (divided ST, ViT-B/16): 8 frames x 224 px, 121.4M params, K400 78.0 top-1 (1x3 views)."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_frames=8, drop_path_rate=0.1)
    return _create_timesformer(pretrained, **{**args, **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 16, 448, 448), mean=(0.45, 0.45, 0.45), std=(0.225, 0.225,
                0.225), num_frames=16, protocol=dict(stride=16, crop_size=448, short_side=448, views='1x3')),
                aliases=('timesformer_hr',))
def timesformer_hr_patch16_448(pretrained: Optional[Any] = None, **overrides: Any) -> TimeSformer:
    """TimeSformer-HR: 16 frames x 448 px, K400 79.7 top-1."""
    args = dict(img_size=448, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_frames=16,
                drop_path_rate=0.1)
    return _create_timesformer(pretrained, **{**args, **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 96, 224, 224), mean=(0.45, 0.45, 0.45), std=(0.225, 0.225,
                0.225), num_frames=96, protocol=dict(stride=4, crop_size=224, short_side=224, views='1x3')),
                aliases=('timesformer_l',))
def timesformer_l_patch16_224(pretrained: Optional[Any] = None, **overrides: Any) -> TimeSformer:
    """TimeSformer-L: 96 frames x 224 px, K400 80.7 top-1."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_frames=96, drop_path_rate=0.1)
    return _create_timesformer(pretrained, **{**args, **overrides})

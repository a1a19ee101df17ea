"""ViViT: video vision transformers on tubelet tokens, models 1-4.

Arnab, Dehghani, Heigold, Sun, Lucic and Schmid, "ViViT: A Video Vision Transformer", ICCV 2021, arXiv:2103.15691.

* Model 1, spatio-temporal attention (``vivit_base_16x2_224``): joint attention over all tubelet tokens + class
  token (the HF ``google/vivit-b-16x2-kinetics400`` model).
* Model 2, factorised encoder (``vivit_base_fe_16x2_224``, :class:`ViViTFactorisedEncoder`): a spatial ViT per
  temporal index (with its class token), then a temporal transformer over the per-frame class tokens.
* Model 3, factorised self-attention (``vivit_base_fsa_16x2_224``): spatial then temporal attention in each block.
* Model 4, factorised dot-product attention (``vivit_base_fdp_16x2_224``): half of the heads attend over time,
  half over space.

Models 3 and 4 have no class token (scenic asserts ``classifier != 'token'`` for them) and average the tokens.

Dataflow (models 1, 3, 4)::

    video (B, C, T, H, W)
      -> TubeletEmbed: Conv3d (t, p, p) stride (t, p, p)               (B, T'*N, D),  T' = T / t,  N = H'*W'
      -> [model 1: prepend class token] + pos_embed (learned, one per token)
      -> blocks: x = blk(x, thw)        SpaceTimeBlock | FactorisedSelfAttentionBlock | FactorisedDotProductBlock
      -> norm -> class token (model 1) or token mean (3, 4) -> head    (B, num_classes)

Initialising from an image ViT (a timm state dict as ``pretrained=``) inflates the patch kernel on the central
frame (``tubelet_init='central'``, the paper's best, Tab. 5) or averages it over frames (``'average'``), resizes
and tiles the position table over time, and (model 3) copies each block's spatial attention into its temporal
attention, as scenic's ``initialise_from_train_state``.

Example::

    >>> import videovit
    >>> net = videovit.create_model("vivit_base_16x2_224", num_classes=400)
    >>> net(torch.randn(1, 3, 32, 224, 224)).shape
    torch.Size([1, 400])
"""

from __future__ import annotations

import fnmatch
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from backbones._builder import load_pretrained
from backbones.layers import PatchEmbed, TubeletEmbed, grid_shape, inflate_conv2d_weight, resample_pos_embed, to_ntuple
from backbones.layers.divided_st_attention import SpaceTimeBlock
from backbones.layers.factorized_attention import FactorisedDotProductBlock, FactorisedSelfAttentionBlock
from backbones.models.vit import VisionTransformer
from engine import choices
from videovit import register_model
from videovit.convert import VIVIT_CONVERTERS
from videovit.nets._video_vit import VideoTokenMixin, check_choice
from videovit.nets.factorised import FactorisedVideoEncoder, TemporalBlocks, fit_time_table

__all__ = ["ViViT", "ViViTFactorisedEncoder", "VIVIT_ATTENTION", "vivit_base_16x2_224", "vivit_base_fe_16x2_224",
           "vivit_base_fsa_16x2_224", "vivit_base_fdp_16x2_224", "vivit_large_16x2_224",
           "vivit_large_fe_16x2_224"]

Thw = Tuple[int, int, int]
VIVIT_ATTENTION = {
    "joint": SpaceTimeBlock,
    "factorised_self_attention": FactorisedSelfAttentionBlock,
    "factorised_dot_product": FactorisedDotProductBlock,
}
_gelu_tanh = partial(nn.GELU, approximate="tanh")  # scenic nn.gelu (approximate) == HF "gelu_fast"
_ln = partial(nn.LayerNorm, eps=1e-6)


def _make_blocks(block_fn: Type[nn.Module], depth: int, dim: int, num_heads: int, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path_rate: float, norm_layer: Type[nn.Module],
                 act_layer: Type[nn.Module]) -> nn.ModuleList:
    dpr = torch.linspace(0, drop_path_rate, depth).tolist()
    return nn.ModuleList([
        block_fn(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop, attn_drop=attn_drop,
                 drop_path=dpr[i], norm_layer=norm_layer, act_layer=act_layer)
        for i in range(depth)])


def _init_vit_weights(model: nn.Module, params: Sequence[Optional[nn.Parameter]]) -> None:
    """timm ViT init: trunc-normal(0.02) tables and linears, zero biases."""
    for p in params:
        if p is not None:
            nn.init.trunc_normal_(p, std=0.02)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _pretrained_cfg(in_chans: int, num_frames: int, img: Tuple[int, int]) -> Dict[str, Any]:
    # HF ViViT / scenic preprocessing: x / 127.5 - 1, i.e. mean = std = 0.5.
    return dict(input_size=(in_chans, num_frames) + img, num_frames=num_frames, first_conv="patch_embed.proj",
                classifier="head", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _inflate_patch_embed(sd: Dict[str, torch.Tensor], tubelet_size: int, mode: str) -> bool:
    """Inflate an image ViT's 2D patch kernel in place; True when ``sd`` came from an image model."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return False
    sd["patch_embed.proj.weight"] = inflate_conv2d_weight(w, tubelet_size, mode)
    return True


def _keep_init(model: nn.Module, sd: Dict[str, torch.Tensor], patterns: Sequence[str]) -> None:
    """Fill model keys matching ``patterns`` that ``sd`` lacks with the model's own (initial) values."""
    for k, v in model.state_dict().items():
        if k not in sd and any(fnmatch.fnmatch(k, p) for p in patterns):
            sd[k] = v.clone()


def _fit_video_pos(pos: torch.Tensor, src_prefix: int, dst_prefix: int, thw: Thw, from_image: bool) -> torch.Tensor:
    """Fit a position table to ``dst_prefix + T*H*W`` tokens.

    An image table ``(1, P + h*w, D)`` is resized to ``(H, W)`` and tiled over ``T`` (scenic ``resize_tile``); a
    video table keeps its spatial grid when the counts allow, else it must share ``T``.
    """
    T, H, W = thw
    prefix, grid = pos[:, :src_prefix], pos[:, src_prefix:]
    n = grid.shape[1]
    if from_image:
        grid = resample_pos_embed(grid, (H, W), grid_shape(n, 2), 0).repeat(1, T, 1)  # (1, T*H*W, D)
    elif n != T * H * W:
        old = (n // (H * W), H, W) if n % (H * W) == 0 else (T,) + grid_shape(n // T, 2)
        grid = resample_pos_embed(grid, thw, old, 0)
    prefix = prefix[:, :dst_prefix]
    return torch.cat([prefix, pos.new_zeros(1, dst_prefix - prefix.shape[1], pos.shape[-1]), grid], dim=1)


class ViViT(VideoTokenMixin, nn.Module):
    """ViViT models 1, 3 and 4 (input ``(B, C, T, H, W)``).

    Args:
        img_size: Frame size.
        patch_size: Spatial tubelet size ``p``.
        tubelet_size: Temporal tubelet size ``t`` (2 in ``16x2`` models).
        num_frames: Clip length ``T`` (a multiple of ``tubelet_size``).
        in_chans: Input channels.
        num_classes: Classes of the head (0: ``forward`` returns pooled features).
        embed_dim: Token width ``D``.
        depth: Number of blocks.
        num_heads: Attention heads (even for model 4).
        mlp_ratio: MLP hidden width multiple.
        qkv_bias: Bias on qkv.
        drop_rate: Dropout after the position embedding and before the head.
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth, linearly increasing over blocks.
        attention_type: ``"joint"`` (model 1), ``"factorised_self_attention"`` (3), ``"factorised_dot_product"`` (4).
        global_pool: ``"token"`` (class token; model 1 only) or ``"avg"``; default: token for model 1, else avg.
        tubelet_init: Inflation of an image ViT's patch kernel: ``"central"`` or ``"average"``.
        norm_layer: Norm class (default ``LayerNorm(eps=1e-6)``).
        act_layer: MLP activation (default tanh-approximate GELU, as scenic and HF ``gelu_fast``).
        block_fn: Block class called as ``block_fn(dim, num_heads, ...)`` and ``blk(x, thw)``.
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: int = 16, tubelet_size: int = 2,
                 num_frames: int = 32, in_chans: int = 3, num_classes: int = 400, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 attention_type: str = "joint", global_pool: Optional[str] = None, tubelet_init: str = "central",
                 norm_layer: Optional[Type[nn.Module]] = None, act_layer: Optional[Type[nn.Module]] = None,
                 block_fn: Optional[Type[nn.Module]] = None) -> None:
        super().__init__()
        self.attention_type = choices.check_choice("attention_type", attention_type, tuple(VIVIT_ATTENTION),
                                                   error=ValueError)
        self.global_pool = choices.check_choice(
            "global_pool", global_pool or ("token" if attention_type == "joint" else "avg"), ("token", "avg"),
            error=ValueError)
        if self.global_pool == "token" and attention_type != "joint":
            raise ValueError(f"attention_type={attention_type!r} has no class token; use global_pool='avg'")
        self.tubelet_init = choices.check_choice("tubelet_init", tubelet_init, ("central", "average"),
                                                 error=ValueError)
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} must be divisible by tubelet_size {tubelet_size}")
        norm_layer = norm_layer or _ln
        img = to_ntuple(img_size, 2, "img_size")
        self.num_classes, self.num_frames, self.tubelet_size = num_classes, num_frames, tubelet_size
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if self.global_pool == "token" else 0
        self.grad_checkpointing = False
        self.patch_embed = TubeletEmbed(img, patch_size, tubelet_size, num_frames, in_chans, embed_dim)
        self.grid_size: Thw = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.num_prefix_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches,
                                                  embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = _make_blocks(block_fn or VIVIT_ATTENTION[attention_type], depth, embed_dim, num_heads,
                                   mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, norm_layer,
                                   act_layer or _gelu_tanh)
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = _pretrained_cfg(in_chans, num_frames, img)
        self.pretrained_ignore_keys: Tuple[str, ...] = ()
        _init_vit_weights(self, (self.cls_token, self.pos_embed))

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Fit a converted checkpoint: image-ViT inflation (patch kernel, tiled position table, temporal attention
        copied from spatial for model 3, as scenic), position-grid resampling, class-token removal for 3/4."""
        sd = dict(sd)
        from_image = _inflate_patch_embed(sd, self.tubelet_size, self.tubelet_init)
        if "pos_embed" in sd:
            src_prefix = 1 if "cls_token" in sd else 0
            sd["pos_embed"] = _fit_video_pos(sd["pos_embed"], src_prefix, self.num_prefix_tokens, self.grid_size,
                                             from_image)
        if self.cls_token is None:
            sd.pop("cls_token", None)
        if from_image:
            for i, blk in enumerate(self.blocks):
                if isinstance(blk, FactorisedSelfAttentionBlock):
                    p = f"blocks.{i}."
                    sd.update({p + "temporal_" + k[len(p):]: v.clone() for k, v in list(sd.items())
                               if k.startswith(p + "attn.") and p + "temporal_" + k[len(p):] not in sd})
            _keep_init(self, sd, ("blocks.*.temporal_norm1.*",))  # scenic: temporal LayerNorm not restored
        return sd

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Thw]:
        if x.ndim != 5:
            raise ValueError(f"expected video (B, C, T, H, W), got shape {tuple(x.shape)}")
        B = x.shape[0]
        t, ph, pw = self.patch_embed.patch_size
        thw = (x.shape[2] // t, x.shape[3] // ph, x.shape[4] // pw)
        x = self.patch_embed(x)  # (B, T'*N, D)
        pos = self.pos_embed
        if thw != self.grid_size:
            pos = resample_pos_embed(pos, thw, self.grid_size, self.num_prefix_tokens)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + T'*N, D)
        return self.pos_drop(x + pos), thw


class TubeletClipEmbed(PatchEmbed):
    """ViViT's tubelet embedding on one clip of ``t`` frames ``(b, C, t, H, W)`` -> a 2D grid ``(b, H', W', D)``.

    The ``embed_layer`` of ViViT FE's spatial ViT: a Conv3d with kernel and stride ``(t, p, p)`` (key
    ``proj``), i.e. ``TubeletEmbed`` on the video with its temporal indices folded into the batch.

    Args:
        img_size, patch_size, in_chans, embed_dim, strict_img_size: As the backbones ViT passes them (2D).
        spatial_dims, flatten: Accepted for the ViT's ``embed_layer`` call; the grid is always 2D channels-last.
        tubelet_size: Frames per tubelet ``t``.
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: Union[int, Sequence[int]] = 16,
                 in_chans: int = 3, embed_dim: int = 768, spatial_dims: int = 2, flatten: bool = False,
                 strict_img_size: bool = False, tubelet_size: int = 2) -> None:
        super().__init__((tubelet_size,) + to_ntuple(img_size, 2, "img_size"),
                         (tubelet_size,) + to_ntuple(patch_size, 2, "patch_size"), in_chans, embed_dim, 3,
                         flatten=False, strict_img_size=strict_img_size)
        self.tubelet_size = tubelet_size
        self.grid_size = self.grid_size[1:]  # (H', W')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, C, t, H, W)`` -> ``(b, H', W', D)``."""
        return super().forward(x)[:, 0]  # (b, 1, H', W', D) -> (b, H', W', D)


class _TubeletViT(VisionTransformer):
    """The backbones ViT as ViViT FE's spatial encoder: its position table is resampled for other frame sizes with
    plain bicubic interpolation, as ViViT's other models (the backbones ViT antialiases, as timm)."""

    def _pos_table(self, grid: Tuple[int, ...]) -> Optional[torch.Tensor]:
        if grid == self.grid_size:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)


class ViViTFactorisedEncoder(FactorisedVideoEncoder):
    """ViViT model 2: a spatial transformer per temporal index, then a temporal transformer (input ``(B,C,T,H,W)``).

    A :class:`~videovit.nets.factorised.FactorisedVideoEncoder` of the backbones ViT on tubelet clips (spatial,
    flattened: ``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm`` at the top level) and
    :class:`~videovit.nets.factorised.TemporalBlocks` (``temporal_blocks``) with ``temporal_cls_token``,
    ``temporal_pos_embed`` and ``temporal_norm``.

    Dataflow::

        video -> clips of t frames                                     (B*T', C, t, H, W)
          -> TubeletClipEmbed -> [cls_token; tokens] + pos_embed       (B*T', 1 + N, D)
          -> blocks (spatial, ``depth``) -> norm -> class tokens       (B, T', D)
          -> [temporal_cls_token; .] + temporal_pos_embed              (B, 1 + T', D)
          -> temporal_blocks (``temporal_depth``) -> temporal_norm -> class token -> head

    An image ViT initialises the spatial part (timm key names); the temporal part (``temporal_*``) then keeps
    its random init (scenic initialises only the ``SpatialTransformer`` from an image model).

    Args:
        temporal_depth: Layers of the temporal transformer (4 for ViViT-B FE).
        temporal_num_heads: Heads of the temporal transformer (default ``num_heads``).
        temporal_mlp_ratio: Its MLP ratio (default ``mlp_ratio``).
        block_fn: Block class of both transformers, called as the backbones ViT calls its ``block_fn`` and
            ``blk(x)``.
        Others: as :class:`ViViT` (the spatial transformer's ``depth``/``num_heads``/``mlp_ratio``).
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: int = 16, tubelet_size: int = 2,
                 num_frames: int = 32, in_chans: int = 3, num_classes: int = 400, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, temporal_depth: int = 4,
                 temporal_num_heads: Optional[int] = None, temporal_mlp_ratio: Optional[float] = None,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, tubelet_init: str = "central",
                 norm_layer: Optional[Type[nn.Module]] = None, act_layer: Optional[Type[nn.Module]] = None,
                 block_fn: Type[nn.Module] = SpaceTimeBlock) -> None:
        if num_frames % tubelet_size or temporal_depth < 1:
            raise ValueError(f"num_frames {num_frames} must be divisible by tubelet_size {tubelet_size} and "
                             f"temporal_depth ({temporal_depth}) >= 1")
        tubelet_init = check_choice(tubelet_init, ("central", "average"), "tubelet_init")
        norm_layer, act_layer = norm_layer or _ln, act_layer or _gelu_tanh
        img = to_ntuple(img_size, 2, "img_size")
        spatial = _TubeletViT(
            img_size=img, patch_size=patch_size, in_chans=in_chans, num_classes=0, global_pool="token",
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            dynamic_img_size=True, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate, act_layer=act_layer, norm_layer=norm_layer,
            embed_layer=partial(TubeletClipEmbed, tubelet_size=tubelet_size), block_fn=block_fn)
        temporal = TemporalBlocks(*_make_blocks(block_fn, temporal_depth, embed_dim, temporal_num_heads or num_heads,
                                                temporal_mlp_ratio or mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                                drop_path_rate, norm_layer, act_layer))
        super().__init__(spatial, temporal, num_frames=num_frames, num_classes=num_classes, tubelet_size=tubelet_size,
                         temporal_name="temporal_blocks", class_token=True, pos_embed=True,
                         temporal_norm=norm_layer(embed_dim), drop_rate=drop_rate)
        self.tubelet_init = tubelet_init
        self.grid_size: Thw = (num_frames // tubelet_size,) + tuple(spatial.grid_size)
        self.pretrained_cfg = _pretrained_cfg(in_chans, num_frames, img)
        self.pretrained_ignore_keys: Tuple[str, ...] = ()
        _init_vit_weights(self, (self.cls_token, self.pos_embed, self.temporal_cls_token, self.temporal_pos_embed))

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Inflate an image ViT's patch kernel (its temporal transformer keeps its init); resample tables."""
        sd = dict(sd)
        T, H, W = self.grid_size
        if _inflate_patch_embed(sd, self.tubelet_size, self.tubelet_init):
            _keep_init(self, sd, ("temporal_*",))
        if "pos_embed" in sd and sd["pos_embed"].shape[1] != 1 + H * W:
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], (H, W), grid_shape(sd["pos_embed"].shape[1] - 1, 2))
        if "temporal_pos_embed" in sd:
            sd["temporal_pos_embed"] = fit_time_table(sd["temporal_pos_embed"], T, 1)
        return sd


def _create(cls: Type[nn.Module], pretrained: Optional[Any], **kwargs: Any) -> nn.Module:
    model = cls(**kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained, VIVIT_CONVERTERS)
    return model


_TINY = dict(img_size=32, patch_size=8, tubelet_size=2, num_frames=4, embed_dim=32, depth=2, num_heads=2,
             num_classes=10)
_B = dict(patch_size=16, tubelet_size=2, num_frames=32, embed_dim=768, depth=12, num_heads=12)
_L = dict(patch_size=16, tubelet_size=2, num_frames=32, embed_dim=1024, depth=24, num_heads=16)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 32, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=32, protocol=dict(stride=2, crop_size=224, short_side=224, views='4x3')),
                aliases=('vivit',))
def vivit_base_16x2_224(pretrained: Optional[Any] = None, **overrides: Any) -> ViViT:
    """ViViT-B/16x2 model 1 (joint attention): 32 frames, 88.9M params, K400 80.0 top-1 (4x3 views)."""
    return _create(ViViT, pretrained, **{**_B, "attention_type": "joint", **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 32, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=32, protocol=dict(stride=2, crop_size=224, short_side=224, views='4x3')))
def vivit_large_16x2_224(pretrained: Optional[Any] = None, **overrides: Any) -> ViViT:
    """ViViT-L/16x2 model 1 (joint attention): 32 frames."""
    return _create(ViViT, pretrained, **{**_L, "attention_type": "joint", **overrides})


@register_model(tiny=dict(_TINY, temporal_depth=1), meta=dict(input_size=(3, 32, 224, 224), mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5), num_frames=32, protocol=dict(stride=2, crop_size=224, short_side=224,
                views='4x3')), aliases=('vivit_fe',))
def vivit_base_fe_16x2_224(pretrained: Optional[Any] = None, **overrides: Any) -> ViViTFactorisedEncoder:
    """ViViT-B/16x2 FE, model 2 (factorised encoder, 12 spatial + 4 temporal layers): 115.1M params, K400 78.8."""
    return _create(ViViTFactorisedEncoder, pretrained, **{**_B, "temporal_depth": 4, **overrides})


@register_model(tiny=dict(_TINY, temporal_depth=1), meta=dict(input_size=(3, 32, 224, 224), mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5), num_frames=32, protocol=dict(stride=2, crop_size=224, short_side=224,
                views='4x3')))
def vivit_large_fe_16x2_224(pretrained: Optional[Any] = None, **overrides: Any) -> ViViTFactorisedEncoder:
    """ViViT-L/16x2 FE, model 2 (24 spatial + 4 temporal layers), K400 80.6 (1x1 view, 128 frames in the paper)."""
    return _create(ViViTFactorisedEncoder, pretrained, **{**_L, "temporal_depth": 4, **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 32, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=32, protocol=dict(stride=2, crop_size=224, short_side=224, views='4x3')))
def vivit_base_fsa_16x2_224(pretrained: Optional[Any] = None, **overrides: Any) -> ViViT:
    """ViViT-B/16x2 model 3 (factorised self-attention: spatial then temporal attention per block)."""
    return _create(ViViT, pretrained, **{**_B, "attention_type": "factorised_self_attention", **overrides})


@register_model(tiny=_TINY, meta=dict(input_size=(3, 32, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                num_frames=32, protocol=dict(stride=2, crop_size=224, short_side=224, views='4x3')))
def vivit_base_fdp_16x2_224(pretrained: Optional[Any] = None, **overrides: Any) -> ViViT:
    """ViViT-B/16x2 model 4 (factorised dot-product attention: half the heads over time, half over space)."""
    return _create(ViViT, pretrained, **{**_B, "attention_type": "factorised_dot_product", **overrides})

"""Vision Transformer (ViT) for 2D images and 3D volumes.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
arXiv:2010.11929. The 3D variant (cubic patches of a volume) is the encoder of UNETR (Hatamizadeh et al.,
arXiv:2103.10504). Key names in 2D are identical to timm's ``VisionTransformer``, so timm state dicts load with
an identity mapping; Google ``.npz``, MONAI ``ViT`` and HF ``ViTModel`` checkpoints go through
:mod:`backbones.convert`.

Dataflow::

    x (B, C_in, *S) -> embed_layer -> (B, *grid, C) -> flatten (B, N, C) -> [cls] + pos_embed -> (B, P+N, C)
      -> blocks x depth -> norm -> pool (token | avg) -> fc_norm -> head -> (B, num_classes)

Example::

    >>> from backbones import create_model
    >>> vit = create_model("vit3d_base_patch16_96", in_chans=1)
    >>> final, feats = vit.forward_intermediates(torch.randn(1, 1, 96, 96, 96), indices=[2, 5, 8, 11])
    >>> [f.shape for f in feats][0]
    torch.Size([1, 768, 6, 6, 6])
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from backbones import register_model
from backbones._builder import build_model, checkpoint_module, take_indices
from backbones.convert import VIT_CONVERTERS
from backbones.layers import Attention, Block, Mlp, PatchEmbed, grid_shape, resample_pos_embed, sincos_nd, to_ntuple
from engine.choices import check_choice

__all__ = ["VisionTransformer", "init_vit_weights"]

IntOrSeq = Union[int, Sequence[int]]
_POOLS = ("token", "avg", "")
_POS_EMBEDS = ("learn", "sincos", "none")


def init_vit_weights(module: nn.Module) -> None:
    """timm's default ViT init: truncated normal (std 0.02) on linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al., arXiv:2010.11929) in 2D or 3D.

    Args:
        img_size: Input size, int or per-axis sequence (H, W) / (D, H, W).
        patch_size: Patch size, int or per-axis.
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 gives pooled features.
        global_pool: ``"token"`` (class token), ``"avg"`` (mean of patch tokens) or ``""`` (no pooling).
        embed_dim: Token width ``C``.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        qkv_bias: Bias on qkv (False for MONAI's ViT).
        qk_norm: Normalise q and k.
        init_values: LayerScale init; ``None`` disables it.
        class_token: Prepend a learned class token.
        no_embed_class: The position table covers patches only; the class token gets none (MONAI layout).
        pos_embed: ``"learn"``, ``"sincos"`` (fixed) or ``"none"``.
        dynamic_img_size: Accept other input sizes, resampling the position table on the fly.
        fc_norm: Norm after pooling instead of before; ``None`` = True for ``"avg"`` pooling (timm rule).
        drop_rate: Dropout before the head.
        pos_drop_rate: Dropout after adding position embeddings.
        proj_drop_rate: Dropout after attention/MLP projections.
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth, linearly increasing over blocks.
        spatial_dims: 2 (images) or 3 (volumes).
        norm_eps: LayerNorm epsilon (1e-6 timm/Google, 1e-5 MONAI, 1e-12 HF).
        act_layer: MLP activation class (default ``nn.GELU``).
        norm_layer: Norm class (default ``LayerNorm(eps=norm_eps)``).
        embed_layer: Patch embedding class, called with ``img_size, patch_size, in_chans, embed_dim, spatial_dims,
            flatten=False, strict_img_size``; it returns a channels-last grid ``(B, *grid, C)`` and has
            ``grid_size``.
        block_fn: Transformer block class.
        attn_layer: Attention class passed to ``block_fn``.
        mlp_layer: MLP class passed to ``block_fn``.
    """

    def __init__(self, img_size: IntOrSeq = 224, patch_size: IntOrSeq = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "token", embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_norm: bool = False,
                 init_values: Optional[float] = None, class_token: bool = True, no_embed_class: bool = False,
                 pos_embed: str = "learn", dynamic_img_size: bool = False, fc_norm: Optional[bool] = None,
                 drop_rate: float = 0.0, pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, spatial_dims: int = 2,
                 norm_eps: float = 1e-6, act_layer: Optional[Type[nn.Module]] = None,
                 norm_layer: Optional[Type[nn.Module]] = None, embed_layer: Type[nn.Module] = PatchEmbed,
                 block_fn: Type[nn.Module] = Block, attn_layer: Type[nn.Module] = Attention,
                 mlp_layer: Type[nn.Module] = Mlp) -> None:
        super().__init__()
        self._check_args(global_pool, class_token, pos_embed, spatial_dims, embed_dim, num_heads, depth)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=norm_eps)
        act_layer = act_layer or nn.GELU
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.no_embed_class = no_embed_class
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        self._init_embed(embed_layer, img_size, patch_size, in_chans, embed_dim, pos_embed, pos_drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear 0 -> drop_path_rate
        self.blocks = nn.Sequential(*[
            block_fn(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm,
                     proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, init_values=init_values, drop_path=dpr[i],
                     act_layer=act_layer, norm_layer=norm_layer, attn_layer=attn_layer, mlp_layer=mlp_layer)
            for i in range(depth)])
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = norm_layer(embed_dim) if not use_fc_norm else nn.Identity()
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        self.pretrained_cfg = self._default_cfg(in_chans)
        self.pretrained_ignore_keys: Tuple[str, ...] = ("pos_embed",) if pos_embed == "sincos" else ()

    # ------------------------------------------------------------------------------------------ construction
    @staticmethod
    def _check_args(global_pool: str, class_token: bool, pos_embed: str, spatial_dims: int, embed_dim: int,
                    num_heads: int, depth: int) -> None:
        check_choice("global_pool", global_pool, _POOLS, error=ValueError)
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'")
        check_choice("pos_embed", pos_embed, _POS_EMBEDS, error=ValueError)
        check_choice("spatial_dims", spatial_dims, (2, 3), error=ValueError)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} should be divisible by num_heads {num_heads}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")

    def _init_embed(self, embed_layer: Type[nn.Module], img_size: IntOrSeq, patch_size: IntOrSeq, in_chans: int,
                    embed_dim: int, pos_embed: str, pos_drop_rate: float) -> None:
        self.img_size = to_ntuple(img_size, self.spatial_dims, "img_size")
        self.patch_embed = embed_layer(img_size=self.img_size, patch_size=patch_size, in_chans=in_chans,
                                       embed_dim=embed_dim, spatial_dims=self.spatial_dims, flatten=False,
                                       strict_img_size=not self.dynamic_img_size)
        self.grid_size: Tuple[int, ...] = tuple(self.patch_embed.grid_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.num_prefix_tokens else None
        self.pos_embed_type = pos_embed
        num_pos = math.prod(self.grid_size) + (0 if self.no_embed_class else self.num_prefix_tokens)
        if pos_embed == "none":
            self.pos_embed = None
        elif pos_embed == "sincos":
            self.pos_embed = nn.Parameter(self._sincos(self.grid_size), requires_grad=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)

    def _sincos(self, grid: Sequence[int]) -> torch.Tensor:
        """Fixed table for ``grid`` with zero rows for embedded prefix tokens: ``(1, [P +] N, C)``."""
        table = sincos_nd(grid, self.embed_dim)  # (1, N, C)
        if not self.no_embed_class and self.num_prefix_tokens:
            table = torch.cat([table.new_zeros(1, self.num_prefix_tokens, self.embed_dim), table], dim=1)
        return table

    def _init_weights(self) -> None:
        if self.pos_embed is not None and self.pos_embed.requires_grad:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(init_vit_weights)

    def _default_cfg(self, in_chans: int) -> Dict[str, Any]:
        rgb = self.spatial_dims == 2 and in_chans == 3
        return dict(input_size=(in_chans, *self.img_size), first_conv="patch_embed.proj", classifier="head",
                    mean=(0.5,) * in_chans if rgb else (0.0,) * in_chans,
                    std=(0.5,) * in_chans if rgb else (1.0,) * in_chans,
                    num_classes=self.num_classes, interpolation="bicubic" if self.spatial_dims == 2 else "trilinear")

    # ---------------------------------------------------------------------------------------------- public API
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameters the optimiser should not decay (timm's ``VisionTransformer.no_weight_decay``)."""
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant ``torch.utils.checkpoint``)."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head (``num_classes=0`` for features) and optionally the pooling."""
        if global_pool is not None:
            self._check_args(global_pool, self.cls_token is not None, self.pos_embed_type, self.spatial_dims,
                             self.embed_dim, 1, 1)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg["num_classes"] = num_classes

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Fit a converted state dict to this model: resample the position table to our grid, drop a class
        token (and its position) we do not have, drop a stored table when ours is fixed or absent."""
        if self.cls_token is None:
            sd.pop("cls_token", None)
        if "pos_embed" in sd and (self.pos_embed is None or not self.pos_embed.requires_grad):
            sd.pop("pos_embed")
        if "pos_embed" in sd and sd["pos_embed"].shape != self.pos_embed.shape:
            sd["pos_embed"] = self._resample_table(sd["pos_embed"])
        return sd

    def _resample_table(self, pos: torch.Tensor) -> torch.Tensor:
        """A stored table ``(1, P' + N', C)`` -> ours ``(1, P + N, C)``; ``P'`` is inferred from the row count."""
        ours = 0 if self.no_embed_class else self.num_prefix_tokens
        for theirs in dict.fromkeys((ours, 1, 0)):
            try:
                old = grid_shape(pos.shape[1] - theirs, self.spatial_dims)
            except ValueError:
                continue
            table = resample_pos_embed(pos[:, theirs:], self.grid_size, old, num_prefix_tokens=0,
                                       antialias=True)  # (1, N, C), as timm
            prefix = pos[:, :min(theirs, ours)]
            pad = pos.new_zeros(1, ours - prefix.shape[1], pos.shape[-1])  # a prefix row the checkpoint lacks
            return torch.cat([prefix, pad, table], dim=1)
        raise ValueError(f"cannot infer the {self.spatial_dims}D grid of a position table with {pos.shape[1]} rows")

    # ------------------------------------------------------------------------------------------------ forward
    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        """``(B, C_in, *S)`` -> tokens ``(B, P+N, C)`` with position embeddings, and the token grid."""
        return self._add_tokens(self.patch_embed(x))  # patch_embed: (B, *grid, C)

    def _add_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        """Channels-last grid ``(B, *grid, C)`` -> ``(B, P+N, C)`` with class token and position embeddings."""
        B, C = x.shape[0], x.shape[-1]
        grid = tuple(x.shape[1:-1])
        x = x.reshape(B, -1, C)  # (B, N, C)
        pos = self._pos_table(grid)
        if self.no_embed_class and pos is not None:
            x = x + pos
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, P+N, C)
        if not self.no_embed_class and pos is not None:
            x = x + pos
        return self.pos_drop(x), grid

    def _pos_table(self, grid: Tuple[int, ...]) -> Optional[torch.Tensor]:
        if self.pos_embed is None or grid == self.grid_size:
            return self.pos_embed
        if self.pos_embed_type == "sincos":
            return self._sincos(grid).to(self.pos_embed)
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        return resample_pos_embed(self.pos_embed, grid, self.grid_size, num_prefix_tokens=prefix, antialias=True)

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = checkpoint_module(blk, x, enabled=self.grad_checkpointing)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *S)`` -> normalised tokens ``(B, P+N, C)`` (class token first when present)."""
        x, _ = self._embed(x)
        return self.norm(self._blocks(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P+N, C)`` -> ``(B, C)`` (or unchanged when ``global_pool=''``)."""
        if self.global_pool == "token":
            return x[:, 0]
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``(B, P+N, C)`` -> logits ``(B, num_classes)`` (or pooled features when ``pre_logits``)."""
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Union[None, int, Sequence[int]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: Optional[str] = None, intermediates_only: bool = False) -> Any:
        """Outputs of selected blocks, for dense decoders (UNETR, TransUNet, ...); timm's signature.

        Args:
            x: ``(B, C_in, *S)``.
            indices: ``None`` = every block, int ``n`` = the last ``n`` blocks, or a list of block indices
                (negative from the end).
            return_prefix_tokens: Return ``(features, prefix tokens (B, P, C))`` pairs.
            norm: Apply the final norm to each intermediate.
            stop_early: Skip the blocks after the last requested one (with ``intermediates_only`` only, so the
                final features stay those of :meth:`forward_features`).
            output_fmt: ``"NLC"`` for patch tokens ``(B, N, C)``; ``"NCHW"`` (2D) / ``"NCDHW"`` (3D) for feature
                maps ``(B, C, *grid)``; ``None`` = the feature-map format of this model.
            intermediates_only: Return only the list.

        Returns:
            The list, one entry per requested block, or ``(final, list)`` where ``final`` is the output of
            :meth:`forward_features` (normalised tokens ``(B, P+N, C)``), so ``forward_head(final) == forward(x)``.
        """
        fmt = self._check_fmt(output_fmt)
        take, last = take_indices(len(self.blocks), indices)
        x, grid = self._embed(x)
        x, raw = self._run_blocks(x, take, last if stop_early and intermediates_only else None)
        inter = [self._format_tokens(y, grid, fmt, norm, return_prefix_tokens) for y in raw]
        return inter if intermediates_only else (self.norm(x), inter)

    def _run_blocks(self, x: torch.Tensor, take: Sequence[int],
                    stop: Optional[int] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run the blocks (up to block ``stop``) on tokens ``(B, P+N, C)``: last tokens and raw outputs of
        blocks ``take``."""
        out = []
        for i, blk in enumerate(self.blocks if stop is None else self.blocks[:stop + 1]):
            x = checkpoint_module(blk, x, enabled=self.grad_checkpointing)
            if i in take:
                out.append(x)
        return x, out

    def _format_tokens(self, y: torch.Tensor, grid: Tuple[int, ...], output_fmt: str, norm: bool,
                       return_prefix_tokens: bool) -> Any:
        """Block output ``(B, P+N, C)`` -> ``(B, N, C)`` or ``(B, C, *grid)`` [with the prefix ``(B, P, C)``]."""
        y = self.norm(y) if norm else y
        P = self.num_prefix_tokens
        feat = y[:, P:]  # (B, N, C)
        if output_fmt != "NLC":
            feat = feat.transpose(1, 2).reshape(y.shape[0], y.shape[-1], *grid)  # (B, C, *grid)
        return (feat, y[:, :P]) if return_prefix_tokens else feat

    def _check_fmt(self, output_fmt: Optional[str]) -> str:
        grid_fmt = "NCHW" if self.spatial_dims == 2 else "NCDHW"
        if output_fmt is None:
            return grid_fmt
        return check_choice("output_fmt", output_fmt, ("NLC", grid_fmt), error=ValueError)


# ----------------------------------------------------------------------------------------------- entry points
def _create_vit(pretrained: Optional[Any], base: Dict[str, Any], overrides: Dict[str, Any]) -> VisionTransformer:
    return build_model(VisionTransformer, pretrained, VIT_CONVERTERS, **{**base, **overrides})


_TINY_2D = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
_TINY_3D = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)
_3D = dict(spatial_dims=3, in_chans=1, img_size=96, num_classes=0, class_token=False, global_pool="avg",
           fc_norm=False)


@register_model(tiny=_TINY_2D, meta=dict(input_size=(3, 224, 224), spatial_dims=2, mean=(0.5, 0.5, 0.5), std=(0.5,
                0.5, 0.5)))
def vit_tiny_patch16_224(pretrained: Optional[Any] = None, **overrides: Any) -> VisionTransformer:
    """ViT-Ti/16 (DeiT-Tiny width, Touvron et al., arXiv:2012.12877) at 224, 5.7M parameters."""
    return _create_vit(pretrained, dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), overrides)


@register_model(tiny=_TINY_2D, meta=dict(input_size=(3, 224, 224), spatial_dims=2, mean=(0.5, 0.5, 0.5), std=(0.5,
                0.5, 0.5)))
def vit_small_patch16_224(pretrained: Optional[Any] = None, **overrides: Any) -> VisionTransformer:
    """ViT-S/16 at 224 (Steiner et al., "How to train your ViT?", arXiv:2106.10270), 22.1M parameters."""
    return _create_vit(pretrained, dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), overrides)


@register_model(tiny=_TINY_2D, meta=dict(input_size=(3, 224, 224), spatial_dims=2, mean=(0.5, 0.5, 0.5), std=(0.5,
                0.5, 0.5)), aliases=('vit',))
def vit_base_patch16_224(pretrained: Optional[Any] = None, **overrides: Any) -> VisionTransformer:
    """ViT-B/16 at 224 (arXiv:2010.11929), 86.6M parameters with the 1000-class head."""
    return _create_vit(pretrained, dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), overrides)


@register_model(tiny=_TINY_2D, meta=dict(input_size=(3, 224, 224), spatial_dims=2, mean=(0.5, 0.5, 0.5), std=(0.5,
                0.5, 0.5)))
def vit_large_patch16_224(pretrained: Optional[Any] = None, **overrides: Any) -> VisionTransformer:
    """ViT-L/16 at 224 (arXiv:2010.11929), 304.3M parameters with the 1000-class head."""
    return _create_vit(pretrained, dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), overrides)


@register_model(tiny=_TINY_3D, meta=dict(input_size=(1, 96, 96, 96), spatial_dims=3))
def vit3d_small_patch16_96(pretrained: Optional[Any] = None, **overrides: Any) -> VisionTransformer:
    """3D ViT-S/16 on 96^3 single-channel volumes: 216 tokens, no class token, mean-pooled features."""
    return _create_vit(pretrained, dict(_3D, patch_size=16, embed_dim=384, depth=12, num_heads=6), overrides)


@register_model(tiny=_TINY_3D, meta=dict(input_size=(1, 96, 96, 96), spatial_dims=3), aliases=('vit3d',))
def vit3d_base_patch16_96(pretrained: Optional[Any] = None, **overrides: Any) -> VisionTransformer:
    """3D ViT-B/16 on 96^3 single-channel volumes, the UNETR encoder (Hatamizadeh et al., arXiv:2103.10504)."""
    return _create_vit(pretrained, dict(_3D, patch_size=16, embed_dim=768, depth=12, num_heads=12), overrides)

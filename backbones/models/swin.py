"""Swin Transformer v1 in 2D and 3D.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", arXiv:2103.14030;
Liu et al., "Video Swin Transformer", arXiv:2106.13230 (3D windows); Hatamizadeh et al., "Swin UNETR: Swin
Transformers for Semantic Segmentation of Brain Tumors in MRI Images", arXiv:2201.01266 (the 3D encoder layout).

Two stage layouts share one class:

* ``downsample_last=False`` (timm, 2D ImageNet models): stage ``i > 0`` *starts* with ``PatchMerging``; key names
  are timm's ``SwinTransformer`` ones (``layers.{i}.downsample``, ``layers.{i}.blocks.{j}.attn.qkv``, ``head.fc``),
  so timm state dicts load one to one.
* ``downsample_last=True`` (MONAI ``SwinViT`` / Swin-UNETR): every stage *ends* with ``PatchMerging`` (the last
  one too), the feature maps MONAI's decoder taps are the stage outputs.

Dataflow (channels-last grids ``(B, *S, C)`` throughout)::

    x (B, C_in, *S) -> PatchEmbed -> (B, *S/p, C)                         level 0
      -> stage 0: [PatchMerging] -> Block(W-MSA) -> Block(SW-MSA) ... [PatchMerging]   level 1
      -> ...
      -> stage K-1                                                        level K
      -> norm -> head (avg pool, fc)

``forward_intermediates`` returns any of the levels as ``(B, C, *grid)`` maps (or tokens / channels-last).

Example::

    >>> from backbones import create_model
    >>> m = create_model("swin_tiny_patch4_window7_224", num_classes=10)
    >>> enc = create_model("swin3d_tiny_patch2_window7_96", num_classes=0)
    >>> feats = enc.forward_intermediates(torch.randn(1, 1, 64, 64, 64), intermediates_only=True)  # 5 maps
"""

from __future__ import annotations

import math
import re
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from backbones import register_model
from backbones._builder import build_model, checkpoint_module, take_indices
from backbones.convert import SWIN_CONVERTERS
from backbones.layers import Block, Mlp, PatchEmbed, to_ntuple
from backbones.layers.window_attention import CLIP_MODES, WindowAttention, resize_rel_pos_table, window_mask_for
from backbones.models.vit import init_vit_weights
from engine.choices import check_choice

__all__ = ["SwinTransformer", "SwinStage", "PatchMerging", "SwinHead", "MERGE_OFFSETS"]

IntOrSeq = Union[int, Sequence[int]]

# order in which the 2^d neighbours are concatenated before the reduction (it fixes the meaning of the weight):
# 2D as timm / the original Swin; 3D as MONAI's ``PatchMerging`` ("merging", used by the released Swin-UNETR weights)
MERGE_OFFSETS = {
    2: ((0, 0), (1, 0), (0, 1), (1, 1)),
    3: ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)),
}
_FMTS = {"NLC": "tokens", "NCHW": "first", "NCDHW": "first", "NHWC": "last", "NDHWC": "last"}


class PatchMerging(nn.Module):
    """Concatenate each 2x2 (2D) or 2x2x2 (3D) neighbourhood, normalise, and project (keys ``norm``,
    ``reduction``). Odd axes are zero-padded at the end.

    Args:
        dim: Input channels ``C``.
        out_dim: Output channels (default ``2 * C``).
        norm_layer: Norm over the ``2^d * C`` concatenated channels.
        spatial_dims: 2 or 3.
        offsets: Neighbour order (default :data:`MERGE_OFFSETS`); MONAI's ``"mergingv2"`` is
            ``itertools.product(range(2), repeat=3)``.
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None, norm_layer: Type[nn.Module] = nn.LayerNorm,
                 spatial_dims: int = 2, offsets: Optional[Sequence[Sequence[int]]] = None) -> None:
        super().__init__()
        check_choice("spatial_dims", spatial_dims, tuple(MERGE_OFFSETS), error=ValueError)
        self.offsets = tuple(tuple(o) for o in (offsets or MERGE_OFFSETS[spatial_dims]))
        n = 2 ** spatial_dims
        self.out_dim = out_dim or 2 * dim
        self.norm = norm_layer(n * dim)
        self.reduction = nn.Linear(n * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *S, C)`` -> ``(B, *ceil(S / 2), out_dim)``."""
        pad = [s % 2 for s in x.shape[1:-1]]
        if any(pad):
            x = F.pad(x, [0, 0] + [v for p in reversed(pad) for v in (0, p)])
        parts = [x[(slice(None),) + tuple(slice(o, None, 2) for o in off)] for off in self.offsets]
        x = torch.cat(parts, dim=-1)  # (B, *S/2, 2^d * C)
        return self.reduction(self.norm(x))


class SwinHead(nn.Module):
    """Global average pool over a channels-last grid, dropout, linear ``fc`` (timm ``ClassifierHead`` keys)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, *S, C)`` -> ``(B, num_classes)`` (``(B, C)`` with ``pre_logits``)."""
        x = self.drop(x.flatten(1, -2).mean(dim=1))  # (B, C)
        return x if pre_logits else self.fc(x)


class SwinStage(nn.Module):
    """One resolution of Swin: optional merge, optional pre-block, ``depth`` alternating W-MSA / SW-MSA blocks.

    Args:
        dim: Channels entering the stage.
        out_dim: Channels leaving it (``2 * dim`` with a merge, else ``dim``).
        depth: Number of blocks (0 gives a merge-only stage).
        num_heads: Attention heads of the blocks.
        window_size: Window of every block (already clipped to the stage grid when wanted).
        spatial_dims: 2 or 3.
        downsample: ``"first"`` (timm), ``"last"`` (MONAI) or ``None``.
        drop_path: One stochastic-depth rate per block.
        block_kwargs: Passed to ``block_fn`` (``mlp_ratio``, ``qkv_bias``, ``proj_drop``, ``attn_drop``,
            ``act_layer``, ``norm_layer``, ``mlp_layer``).
        block_fn: Block class (``backbones.layers.Block``).
        attn_layer: Window attention class; gets ``window_size``, ``shift``, ``spatial_dims``, ``clip_mode``.
        merge_layer: Patch-merging class.
        pre_layer: Optional factory ``pre_layer(channels) -> nn.Module`` run on ``(B, C, *S)`` before the blocks
            (Swin-UNETR v2's residual conv block).
        clip_mode: See :class:`~backbones.layers.window_attention.WindowAttention`.
    """

    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int, window_size: Tuple[int, ...],
                 spatial_dims: int, downsample: Optional[str], drop_path: Sequence[float],
                 block_kwargs: Dict[str, Any], block_fn: Callable[..., nn.Module] = Block,
                 attn_layer: Callable[..., nn.Module] = WindowAttention,
                 merge_layer: Callable[..., nn.Module] = PatchMerging,
                 pre_layer: Optional[Callable[[int], nn.Module]] = None, clip_mode: str = "relative") -> None:
        super().__init__()
        check_choice("downsample", downsample, ("first", "last", None), error=ValueError)
        norm_layer = block_kwargs.get("norm_layer", nn.LayerNorm)
        self.downsample_first = downsample == "first"
        self.grad_checkpointing = False
        block_dim = out_dim if downsample == "first" else dim
        self.downsample = (merge_layer(dim, out_dim, norm_layer=norm_layer, spatial_dims=spatial_dims)
                           if downsample else nn.Identity())
        self.pre_block = pre_layer(block_dim) if pre_layer is not None else None
        self.blocks = nn.Sequential(*[
            block_fn(dim=block_dim, num_heads=num_heads, drop_path=drop_path[i], **block_kwargs,
                     attn_layer=partial(attn_layer, window_size=window_size, shift=i % 2 == 1,
                                        spatial_dims=spatial_dims, clip_mode=clip_mode))
            for i in range(depth)])

    def _shift_mask(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The shifted-window mask for this grid, built once and shared by the stage's SW-MSA blocks."""
        if len(self.blocks) < 2:
            return None
        attn = self.blocks[1].attn
        return window_mask_for(x.shape[1:-1], attn.window_size, attn.shift_size, x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *S, C)`` -> ``(B, *S', C')``."""
        if self.downsample_first:
            x = self.downsample(x)
        if self.pre_block is not None:
            x = self.pre_block(x.movedim(-1, 1).contiguous()).movedim(1, -1)  # conv on (B, C, *S)
        mask = self._shift_mask(x)
        for i, blk in enumerate(self.blocks):
            x = checkpoint_module(blk, x, mask if i % 2 else None, enabled=self.grad_checkpointing)
        if not self.downsample_first:
            x = self.downsample(x)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer v1 (arXiv:2103.14030) for 2D images or 3D volumes.

    Args:
        img_size: Nominal input size (int or per axis); sets ``pretrained_cfg`` and, with
            ``clip_mode="relative"``, clips windows of stages whose grid is smaller than the window (as timm).
            Any input divisible by the patch size runs.
        patch_size: Patch size (int or per axis).
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 for pooled features.
        embed_dim: Channels of stage 0; stage ``i`` has ``embed_dim * 2**i``.
        depths: Blocks per stage.
        num_heads: Heads per stage.
        window_size: Attention window (int or per axis), shared by all stages.
        mlp_ratio: MLP hidden width / channels.
        qkv_bias: Bias on ``qkv``.
        drop_rate: Dropout before the classifier.
        pos_drop_rate: Dropout after the patch embedding (MONAI's ``drop_rate`` goes here and to ``proj_drop_rate``).
        proj_drop_rate: Dropout after attention and MLP projections.
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth, linear over all blocks.
        spatial_dims: 2 or 3.
        patch_norm: LayerNorm after the patch embedding (timm: yes, MONAI: no).
        downsample_last: MONAI layout (merge at the end of every stage) instead of timm's (merge at the start of
            stages 1..K-1).
        final_norm: Norm on the last stage's output (``norm``); MONAI's encoder has none.
        clip_mode: ``"relative"`` (timm) or ``"truncate"`` (MONAI, exact parity with Swin-UNETR weights).
        norm_layer: Norm class (``nn.LayerNorm``).
        act_layer: MLP activation (``nn.GELU``).
        block_fn: Block class; ``attn_layer``/``mlp_layer``/``merge_layer``: their classes.
        stage_pre_layer: Optional ``f(channels) -> nn.Module`` run before each stage's blocks on ``(B, C, *S)``.
    """

    def __init__(self, img_size: IntOrSeq = 224, patch_size: IntOrSeq = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: IntOrSeq = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 spatial_dims: int = 2, patch_norm: bool = True, downsample_last: bool = False,
                 final_norm: bool = True, clip_mode: str = "relative", norm_layer: Optional[Type[nn.Module]] = None,
                 act_layer: Optional[Type[nn.Module]] = None, block_fn: Callable[..., nn.Module] = Block,
                 attn_layer: Callable[..., nn.Module] = WindowAttention, mlp_layer: Type[nn.Module] = Mlp,
                 merge_layer: Callable[..., nn.Module] = PatchMerging,
                 stage_pre_layer: Optional[Callable[[int], nn.Module]] = None) -> None:
        super().__init__()
        self._check_args(spatial_dims, embed_dim, depths, num_heads, clip_mode, drop_path_rate)
        norm_layer = norm_layer or nn.LayerNorm
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.downsample_last = downsample_last
        self.img_size = to_ntuple(img_size, spatial_dims, "img_size")
        self.window_size = to_ntuple(window_size, spatial_dims, "window_size")
        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim, spatial_dims,
                                      norm_layer=norm_layer if patch_norm else None, flatten=False)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        block_kwargs = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                            attn_drop=attn_drop_rate, act_layer=act_layer or nn.GELU, norm_layer=norm_layer,
                            mlp_layer=mlp_layer)
        self.layers = self._make_stages(embed_dim, depths, num_heads, drop_path_rate, clip_mode, block_kwargs,
                                        dict(block_fn=block_fn, attn_layer=attn_layer, merge_layer=merge_layer,
                                             pre_layer=stage_pre_layer))
        self.num_features = self.feature_info[-1]["num_chs"]
        self.norm = norm_layer(self.num_features) if final_norm else nn.Identity()
        self.head = SwinHead(self.num_features, num_classes, drop_rate)
        self.apply(init_vit_weights)
        self.pretrained_cfg = self._default_cfg(in_chans)
        # MONAI / SSL encoders have no final norm: allow it to stay at init when loading them
        self.pretrained_ignore_keys: Tuple[str, ...] = ("norm.weight", "norm.bias") if downsample_last else ()

    # ------------------------------------------------------------------------------------------ construction
    @staticmethod
    def _check_args(spatial_dims: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                    clip_mode: str, drop_path_rate: float) -> None:
        check_choice("spatial_dims", spatial_dims, (2, 3), error=ValueError)
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have one entry per stage")
        if any(d < 1 for d in depths):
            raise ValueError(f"every stage needs at least one block, got depths {tuple(depths)}")
        for i, h in enumerate(num_heads):
            if (embed_dim * 2 ** i) % h:
                raise ValueError(f"stage {i} width {embed_dim * 2 ** i} (embed_dim {embed_dim} * 2**{i}) is not "
                                 f"divisible by num_heads {h}")
        check_choice("clip_mode", clip_mode, CLIP_MODES, error=ValueError)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")

    def _stage_window(self, stage: int, clip_mode: str) -> Tuple[int, ...]:
        """timm clips a window to a smaller stage grid at construction; MONAI keeps the full table."""
        if clip_mode == "truncate":
            return self.window_size
        grid = [math.ceil(g / 2 ** stage) for g in self.patch_embed.grid_size]
        return tuple(min(g, w) for g, w in zip(grid, self.window_size))

    def _make_stages(self, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], drop_path_rate: float,
                     clip_mode: str, block_kwargs: Dict[str, Any], layers: Dict[str, Any]) -> nn.Sequential:
        dpr = [float(r) for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        patch = max(self.patch_embed.patch_size)
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch, module="patch_embed")]
        stages = []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2 ** i
            if self.downsample_last:
                in_dim, out_dim, down, red = dim, 2 * dim, "last", patch * 2 ** (i + 1)
            else:
                in_dim, out_dim, down, red = dim // (2 if i else 1), dim, "first" if i else None, patch * 2 ** i
            stages.append(SwinStage(in_dim, out_dim, depth, num_heads[i], self._stage_window(i, clip_mode),
                                    self.spatial_dims, down, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                                    block_kwargs, clip_mode=clip_mode, **layers))
            self.feature_info.append(dict(num_chs=out_dim, reduction=red, module=f"layers.{i}"))
        return nn.Sequential(*stages)

    def _default_cfg(self, in_chans: int) -> Dict[str, Any]:
        rgb = self.spatial_dims == 2 and in_chans == 3
        return dict(input_size=(in_chans, *self.img_size), first_conv="patch_embed.proj", classifier="head.fc",
                    mean=(0.485, 0.456, 0.406) if rgb else (0.0,) * in_chans,
                    std=(0.229, 0.224, 0.225) if rgb else (1.0,) * in_chans, num_classes=self.num_classes,
                    interpolation="bicubic" if self.spatial_dims == 2 else "trilinear")

    # ---------------------------------------------------------------------------------------------- public API
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant ``torch.utils.checkpoint``)."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set:
        """Parameter names conventionally excluded from weight decay (the bias tables)."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (``num_classes=0`` for pooled features)."""
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg["num_classes"] = num_classes

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Drop stored buffers (``relative_position_index``, ``attn_mask``) and resample bias tables whose
        window differs from ours (bicubic / trilinear, as timm's ``resize_rel_pos_bias_table``)."""
        sd = {k: v for k, v in sd.items() if not re.search(r"(relative_position_index|attn_mask)$", k)}
        own = dict(self.named_modules())
        for k, v in list(sd.items()):
            if not k.endswith("relative_position_bias_table"):
                continue
            mod = own.get(k.rsplit(".", 1)[0])
            if isinstance(mod, WindowAttention) and v.shape != mod.relative_position_bias_table.shape:
                sd[k] = resize_rel_pos_table(v, mod.window_size)
        return sd

    # ------------------------------------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *S)`` -> normalised last-stage grid ``(B, *S/stride, C)`` (channels last)."""
        x = self.pos_drop(self.patch_embed(x))  # (B, *grid, C)
        x = self.layers(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Channels-last grid -> logits ``(B, num_classes)`` (pooled ``(B, C)`` with ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Union[None, int, Sequence[int]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: Optional[str] = None,
                              intermediates_only: bool = False) -> Any:
        """Feature maps of selected levels, for dense decoders (Swin-UNETR, UPerNet, ...); timm's signature.

        Level 0 is the patch embedding, level ``i + 1`` the output of stage ``i`` (see ``feature_info`` for
        channels and strides); a timm-layout Swin-T has 5 levels at strides 4, 4, 8, 16, 32, a MONAI-layout one
        at strides 2, 4, 8, 16, 32.

        Args:
            x: ``(B, C_in, *S)``.
            indices: ``None`` = every level, int ``n`` = the last ``n``, or a list of level indices.
            norm: Apply the final norm to the last level (the only one of its width, as timm).
            stop_early: Skip stages after the last requested level (with ``intermediates_only`` only, so the final
                features stay those of :meth:`forward_features`).
            output_fmt: ``"NCHW"``/``"NCDHW"`` (channels first; ``None`` = this default), ``"NHWC"``/``"NDHWC"``
                (channels last) or ``"NLC"`` (tokens ``(B, N, C)``).
            intermediates_only: Return only the list.

        Returns:
            The list, or ``(final, list)`` with ``final`` the output of :meth:`forward_features` (normalised
            channels-last grid), so ``forward_head(final) == forward(x)``.
        """
        take, last = take_indices(len(self.feature_info), indices)
        levels = self.forward_levels(x, stop=last if stop_early and intermediates_only else None)
        inter = self.format_levels(levels, take, norm, output_fmt)
        return inter if intermediates_only else (self.norm(levels[-1]), inter)

    def forward_levels(self, x: torch.Tensor, stop: Optional[int] = None) -> List[torch.Tensor]:
        """Every level up to ``stop`` (all by default) as raw channels-last grids ``(B, *grid_i, C_i)``."""
        x = self.pos_drop(self.patch_embed(x))  # (B, *grid, C)
        levels = [x]
        for stage in self.layers if stop is None else self.layers[:stop]:
            x = stage(x)
            levels.append(x)
        return levels

    def format_levels(self, levels: Sequence[torch.Tensor], take: Sequence[int], norm: bool,
                      output_fmt: Optional[str]) -> List[torch.Tensor]:
        """Levels ``take`` (absolute indices) of :meth:`forward_levels` in ``output_fmt`` (see
        :meth:`forward_intermediates`); ``norm`` applies the final norm to the last level."""
        fmt = _FMTS[check_choice("output_fmt", output_fmt or "NCHW", tuple(_FMTS), error=ValueError)]
        last = len(self.layers)
        return [self._format(self.norm(levels[i]) if norm and i == last else levels[i], fmt) for i in take]

    @staticmethod
    def _format(x: torch.Tensor, fmt: str) -> torch.Tensor:
        if fmt == "first":
            return x.movedim(-1, 1).contiguous()  # (B, C, *grid)
        return x.flatten(1, -2) if fmt == "tokens" else x  # (B, N, C) | (B, *grid, C)


# ----------------------------------------------------------------------------------------------- entry points
_TINY_2D = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=10)
_TINY_3D = dict(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(1, 2), window_size=4)
_SWIN3D = dict(spatial_dims=3, in_chans=1, img_size=96, patch_size=2, window_size=7, num_classes=0,
               drop_path_rate=0.0, patch_norm=False, downsample_last=True, clip_mode="truncate")


def _create_swin(pretrained: Optional[Any], base: Dict[str, Any], overrides: Dict[str, Any]) -> SwinTransformer:
    return build_model(SwinTransformer, pretrained, SWIN_CONVERTERS, **{**base, **overrides})


@register_model(tiny=_TINY_2D, meta=dict(input_size=(3, 224, 224), spatial_dims=2, mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225)), aliases=('swin',))
def swin_tiny_patch4_window7_224(pretrained: Optional[Any] = None, **overrides: Any) -> SwinTransformer:
    """Swin-T (arXiv:2103.14030, Table 1): C=96, depths (2, 2, 6, 2), 28.3M parameters."""
    return _create_swin(pretrained, dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)), overrides)


@register_model(tiny=_TINY_2D, meta=dict(input_size=(3, 224, 224), spatial_dims=2, mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225)))
def swin_small_patch4_window7_224(pretrained: Optional[Any] = None, **overrides: Any) -> SwinTransformer:
    """Swin-S (arXiv:2103.14030, Table 1): C=96, depths (2, 2, 18, 2), 49.6M parameters."""
    return _create_swin(pretrained, dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)), overrides)


@register_model(tiny=_TINY_2D, meta=dict(input_size=(3, 224, 224), spatial_dims=2, mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225)))
def swin_base_patch4_window7_224(pretrained: Optional[Any] = None, **overrides: Any) -> SwinTransformer:
    """Swin-B (arXiv:2103.14030, Table 1): C=128, depths (2, 2, 18, 2), 87.8M parameters."""
    return _create_swin(pretrained, dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)), overrides)


@register_model(tiny=_TINY_3D, meta=dict(input_size=(1, 96, 96, 96), spatial_dims=3), aliases=('swin3d',))
def swin3d_tiny_patch2_window7_96(pretrained: Optional[Any] = None, **overrides: Any) -> SwinTransformer:
    """3D Swin encoder of Swin-UNETR (arXiv:2201.01266) in MONAI's ``SwinViT`` layout: patch 2, window 7,
    depths (2, 2, 2, 2), heads (3, 6, 12, 24), C=48; loads MONAI ``SwinUNETR`` and ``model_swinvit.pt`` weights."""
    return _create_swin(pretrained, dict(_SWIN3D, embed_dim=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24)),
                        overrides)

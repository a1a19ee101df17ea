"""MViT: Multiscale Vision Transformers (v1) for video.

Fan et al., "Multiscale Vision Transformers", arXiv:2104.11227. MViT-B is 4 stages of pooling-attention blocks
(depths 1, 2, 11, 2) that halve the spatial grid by Q pooling and double width and heads at each stage, with K/V
pooled by an adaptive stride (``(1, 8, 8)`` at stage 1, divided by each Q stride).

Dataflow::

    video (B, 3, T, H, W)
      -> patch_embed: Conv3d k(3, 7, 7) s(2, 4, 4) p(1, 3, 3)        (B, T/2, H/4, W/4, 96)
      -> + pos_embed_spatial + pos_embed_temporal, prepend CLS (+ pos_embed_class)   (B, 1 + T/2*H/4*W/4, 96)
      -> blocks (MultiScaleBlock, x, thw = blk(x, thw))             stage widths 96 -> 192 -> 384 -> 768
      -> norm -> CLS token -> dropout -> head                        (B, num_classes)

Key names follow PySlowFast (``patch_embed.proj``, ``cls_token``, ``pos_embed_{spatial,temporal,class}``,
``blocks.i.attn.qkv``, ``norm``); pytorchvideo and PySlowFast checkpoints load through
``videovit/convert/pytorchvideo_mvit.py``.

Example::

    >>> import videovit
    >>> net = videovit.create_model("mvit_base_16x4", num_classes=400)
    >>> net(torch.randn(1, 3, 16, 224, 224)).shape
    torch.Size([1, 400])
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from backbones._builder import build_model, checkpoint_module, take_indices
from backbones.layers import PatchEmbed, resample_pos_embed, resample_time_embed, to_ntuple
from backbones.layers.pooling_attention import POOL_MODES, MultiScaleBlock
from engine.choices import check_choice
from videovit import register_model
from videovit.convert import MVIT_CONVERTERS

__all__ = ["MViT", "MViTStage", "MVIT_B_STAGES", "mvit_base_16x4", "mvit_base_32x3"]

Thw = Tuple[int, int, int]


@dataclass(frozen=True)
class MViTStage:
    """One MViT stage.

    Args:
        depth: Blocks in the stage.
        dim_mul: Width multiplier relative to the previous stage.
        head_mul: Head-count multiplier relative to the previous stage.
        stride_q: Q pooling stride of the stage's first block (``(1, 1, 1)``: no Q pooling).
    """

    depth: int
    dim_mul: float = 1.0
    head_mul: float = 1.0
    stride_q: Thw = (1, 1, 1)


MVIT_B_STAGES = (
    MViTStage(1),
    MViTStage(2, 2.0, 2.0, (1, 2, 2)),
    MViTStage(11, 2.0, 2.0, (1, 2, 2)),
    MViTStage(2, 2.0, 2.0, (1, 2, 2)),
)


@dataclass(frozen=True)
class _BlockCfg:
    dim: int
    dim_out: int
    num_heads: int
    kernel_q: Optional[Thw]
    stride_q: Thw
    kernel_kv: Optional[Thw]
    stride_kv: Thw
    drop_path: float


def _pool_kernel(kernel: Optional[Thw], stride: Thw) -> Thw:
    """The fixed pooling kernel, or ``s + 1`` per axis where the stride ``s > 1`` (pytorchvideo's default)."""
    return tuple(kernel) if kernel is not None else tuple(s + 1 if s > 1 else s for s in stride)


def _block_schedule(stages: Sequence[MViTStage], embed_dim: int, num_heads: int, pool_kernel: Optional[Thw],
                    kv_stride: Optional[Thw], drop_path_rate: float) -> Tuple[_BlockCfg, ...]:
    """Expand a stage schedule into per-block widths, heads and pooling (MViT Tab. 3).

    The last block of a stage widens to the next stage's width (MViT v1 / pytorchvideo convention); the first
    block of a stage pools Q; K/V strides start at ``kv_stride`` and are divided by every Q stride.
    """
    dims, heads, d, h = [], [], float(embed_dim), float(num_heads)
    for st in stages:
        d, h = d * st.dim_mul, h * st.head_mul
        dims.append(int(round(d)))
        heads.append(max(1, int(round(h))))
    depth = sum(st.depth for st in stages)
    dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay rule
    kv, out = (tuple(kv_stride) if kv_stride is not None else None), []
    for s, st in enumerate(stages):
        for j in range(st.depth):
            sq = tuple(st.stride_q) if j == 0 else (1, 1, 1)
            if kv is not None and sq != (1, 1, 1):
                kv = tuple(max(a // b, 1) for a, b in zip(kv, sq))
            last = j == st.depth - 1 and s + 1 < len(stages)
            out.append(_BlockCfg(
                dim=dims[s], dim_out=dims[s + 1] if last else dims[s], num_heads=heads[s],
                kernel_q=_pool_kernel(pool_kernel, sq) if sq != (1, 1, 1) else None, stride_q=sq,
                kernel_kv=_pool_kernel(pool_kernel, kv) if kv is not None else None, stride_kv=kv or (1, 1, 1),
                drop_path=dpr[len(out)]))
    return tuple(out)


class MViT(nn.Module):
    """Multiscale Vision Transformer (v1) for video classification.

    Args:
        img_size: Input spatial size.
        num_frames: Input frames.
        in_chans: Input channels.
        num_classes: Classes of the head (0: no head, ``forward`` returns pooled features).
        embed_dim: Width of the first stage.
        num_heads: Heads of the first stage.
        stages: Stage schedule (tuple of :class:`MViTStage`).
        mlp_ratio: MLP hidden width multiple.
        qkv_bias: Bias on qkv.
        patch_size: Stride of the patch-embedding conv ``(t, h, w)``.
        patch_kernel: Kernel of the patch-embedding conv.
        patch_padding: Padding of the patch-embedding conv.
        pool_kernel: Q/K/V conv-pooling kernel; ``None`` uses ``stride + 1`` per pooled axis.
        kv_stride: Initial (adaptive) K/V pooling stride; ``None`` disables K/V pooling.
        pool_mode: ``"conv"``, ``"avg"`` or ``"max"``.
        class_token: Use a CLS token (head on CLS); otherwise the head averages the tokens.
        sep_pos_embed: Separate spatial/temporal/class position tables (MViT); else one joint table.
        residual_pooling: MViTv2 residual pooling connection (off for MViT v1).
        drop_rate: Dropout before the head (0.5 in MViT).
        drop_path_rate: Stochastic depth, linearly increasing over blocks.
        norm_layer: Norm class of blocks and final norm.
        act_layer: MLP activation.
        block_fn: Block class, called with the per-block schedule keywords.
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, num_frames: int = 16, in_chans: int = 3,
                 num_classes: int = 400, embed_dim: int = 96, num_heads: int = 1,
                 stages: Sequence[MViTStage] = MVIT_B_STAGES, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 patch_size: Sequence[int] = (2, 4, 4), patch_kernel: Sequence[int] = (3, 7, 7),
                 patch_padding: Sequence[int] = (1, 3, 3), pool_kernel: Optional[Sequence[int]] = (3, 3, 3),
                 kv_stride: Optional[Sequence[int]] = (1, 8, 8), pool_mode: str = "conv", class_token: bool = True,
                 sep_pos_embed: bool = True, residual_pooling: bool = False, drop_rate: float = 0.5,
                 drop_path_rate: float = 0.0, norm_layer: Type[nn.Module] = partial(nn.LayerNorm, eps=1e-6),
                 act_layer: Type[nn.Module] = nn.GELU, block_fn: Type[nn.Module] = MultiScaleBlock) -> None:
        super().__init__()
        if not stages or any(st.depth < 1 for st in stages):
            raise ValueError(f"stages must be non-empty with depth >= 1 each, got {stages}")
        check_choice("pool_mode", pool_mode, POOL_MODES, error=ValueError)
        img = to_ntuple(img_size, 2, "img_size")
        self.num_classes = num_classes
        self.num_prefix_tokens = 1 if class_token else 0
        self.global_pool = "token" if class_token else "avg"
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed((num_frames,) + img, patch_size, in_chans, embed_dim, spatial_dims=3,
                                      flatten=False, kernel_size=patch_kernel, padding=patch_padding)
        self.grid_size: Thw = self.patch_embed.grid_size
        self._init_pos_embed(embed_dim, class_token, sep_pos_embed)
        schedule = _block_schedule(stages, embed_dim, num_heads, None if pool_kernel is None else tuple(pool_kernel),
                                   None if kv_stride is None else tuple(kv_stride), drop_path_rate)
        self.blocks = nn.ModuleList([
            block_fn(c.dim, c.dim_out, c.num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=c.drop_path,
                     act_layer=act_layer, norm_layer=norm_layer, kernel_q=c.kernel_q, kernel_kv=c.kernel_kv,
                     stride_q=c.stride_q, stride_kv=c.stride_kv, mode=pool_mode,
                     num_prefix_tokens=self.num_prefix_tokens, residual_pooling=residual_pooling)
            for c in schedule])
        self.num_features = schedule[-1].dim_out
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg: Dict[str, Any] = dict(
            input_size=(in_chans, num_frames) + img, num_frames=num_frames, first_conv="patch_embed.proj",
            classifier="head", mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), num_classes=num_classes)
        self.pretrained_ignore_keys: Tuple[str, ...] = ()
        self.apply(self._init_weights)

    def _init_pos_embed(self, dim: int, class_token: bool, sep: bool) -> None:
        T, H, W = self.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_embed = self.pos_embed_spatial = self.pos_embed_temporal = self.pos_embed_class = None
        if sep:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, H * W, dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, T, dim))
            self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + T * H * W, dim))
        for p in (self.cls_token, self.pos_embed, self.pos_embed_spatial, self.pos_embed_temporal,
                  self.pos_embed_class):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"cls_token", "pos_embed", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Resample position tables of a checkpoint trained at another clip length / resolution."""
        sd = dict(sd)
        T, H, W = self.grid_size
        if "pos_embed_spatial" in sd and sd["pos_embed_spatial"].shape[1] != H * W:
            old = int(round(sd["pos_embed_spatial"].shape[1] ** 0.5))
            sd["pos_embed_spatial"] = resample_pos_embed(sd["pos_embed_spatial"], (H, W), (old, old), 0)
        if "pos_embed_temporal" in sd:
            sd["pos_embed_temporal"] = resample_time_embed(sd["pos_embed_temporal"], T)
        return sd

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, H, W, C)`` grid -> ``(B, P + T*H*W, C)`` tokens with CLS and position embeddings."""
        B, T, H, W, C = x.shape
        gT, gH, gW = self.grid_size
        if self.pos_embed is None:
            sp = self.pos_embed_spatial
            if (H, W) != (gH, gW):
                sp = resample_pos_embed(sp, (H, W), (gH, gW), num_prefix_tokens=0)
            tp = resample_time_embed(self.pos_embed_temporal, T)
            x = x + sp.reshape(1, 1, H, W, C) + tp.reshape(1, T, 1, 1, C)
        elif (T, H, W) != self.grid_size:
            raise ValueError(f"input grid {(T, H, W)} differs from the joint pos_embed grid {self.grid_size}")
        x = x.reshape(B, T * H * W, C)  # (B, N, C)
        if self.cls_token is not None:
            cls = self.cls_token if self.pos_embed_class is None else self.cls_token + self.pos_embed_class
            x = torch.cat((cls.expand(B, -1, -1), x), dim=1)  # (B, 1 + N, C)
        return x if self.pos_embed is None else x + self.pos_embed

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Thw]:
        if x.ndim != 5:
            raise ValueError(f"expected video (B, C, T, H, W), got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # (B, T', H', W', C)
        thw = tuple(x.shape[1:4])
        return self._pos_embed(x), thw

    def _run_block(self, blk: nn.Module, x: torch.Tensor, thw: Thw) -> Tuple[torch.Tensor, Thw]:
        return checkpoint_module(blk, x, thw, enabled=self.grad_checkpointing)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> normalised tokens ``(B, P + T'*H'*W', C_last)``."""
        x, thw = self._embed(x)
        for blk in self.blocks:
            x, thw = self._run_block(blk, x, thw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> CLS (or mean) -> dropout -> head; ``pre_logits`` stops before the head."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(1)  # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Union[int, Sequence[int], None] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCTHW", intermediates_only: bool = False) -> Any:
        """Outputs of selected blocks; timm's signature and semantics.

        Args:
            x: Video ``(B, C, T, H, W)``.
            indices: ``None`` = every block, int ``n`` = the last ``n`` blocks, or a list of block indices.
            return_prefix_tokens: Return ``(features, prefix (B, P, C))`` pairs.
            norm: Apply the final norm to every intermediate whose width matches it.
            stop_early: Skip the blocks after the last requested one (with ``intermediates_only`` only).
            output_fmt: ``"NCTHW"`` feature maps ``(B, C, T', H', W')`` or ``"NLC"`` grid tokens
                ``(B, T'*H'*W', C)``; prefix tokens are left out of both (see ``return_prefix_tokens``).
            intermediates_only: Return only the list.

        Returns:
            The list, or ``(final, list)`` with ``final`` the output of :meth:`forward_features`, so
            ``forward_head(final) == forward(x)``.
        """
        check_choice("output_fmt", output_fmt, ("NCTHW", "NLC"), error=ValueError)
        take, last = take_indices(len(self.blocks), indices)
        x, thw = self._embed(x)
        out = []
        for i, blk in enumerate(self.blocks[:last + 1] if stop_early and intermediates_only else self.blocks):
            x, thw = self._run_block(blk, x, thw)
            if i in take:
                y = self.norm(x) if norm and x.shape[-1] == self.num_features else x
                out.append(self._format_tokens(y, thw, output_fmt, return_prefix_tokens))
        return out if intermediates_only else (self.norm(x), out)

    def _format_tokens(self, y: torch.Tensor, thw: Thw, output_fmt: str, with_prefix: bool) -> Any:
        """Tokens ``(B, P + T'*H'*W', C)`` -> ``(B, T'*H'*W', C)`` or ``(B, C, T', H', W')`` [with ``(B, P, C)``]."""
        B, N, C = y.shape
        prefix, grid = y[:, :self.num_prefix_tokens], y[:, self.num_prefix_tokens:]
        feat = grid if output_fmt == "NLC" else grid.transpose(1, 2).reshape(B, C, *thw)  # (B, C, T', H', W')
        return (feat, prefix) if with_prefix else feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


def _stages_with_depths(depths: Optional[Sequence[int]], stages: Sequence[MViTStage]) -> Tuple[MViTStage, ...]:
    if depths is None:
        return tuple(stages)
    if len(depths) != len(stages):
        raise ValueError(f"depths {tuple(depths)} must have one entry per stage ({len(stages)})")
    return tuple(MViTStage(d, st.dim_mul, st.head_mul, st.stride_q) for d, st in zip(depths, stages))


def _create_mvit(pretrained: Optional[Any], depths: Optional[Sequence[int]] = None, **kwargs: Any) -> MViT:
    kwargs["stages"] = _stages_with_depths(depths, kwargs.get("stages", MVIT_B_STAGES))
    return build_model(MViT, pretrained, MVIT_CONVERTERS, **kwargs)


_TINY = dict(img_size=32, num_frames=4, embed_dim=16, num_heads=1, depths=(1, 1, 1, 1), num_classes=10)


@register_model(tiny=_TINY, meta=dict(input_size=(3, 16, 224, 224), mean=(0.45, 0.45, 0.45), std=(0.225, 0.225,
                0.225), num_frames=16, protocol=dict(stride=4, crop_size=224, short_side=224, views='5x1')),
                aliases=('mvit',))
def mvit_base_16x4(pretrained: Optional[Any] = None, **overrides: Any) -> MViT:
    """MViT-B 16x4 (36.6M params, K400 78.4 / 78.9 top-1), 16 frames at stride 4, 224 px."""
    args = dict(num_frames=16, drop_path_rate=0.2)
    return _create_mvit(pretrained, **dict(args, **overrides))


@register_model(tiny=_TINY, meta=dict(input_size=(3, 32, 224, 224), mean=(0.45, 0.45, 0.45), std=(0.225, 0.225,
                0.225), num_frames=32, protocol=dict(stride=3, crop_size=224, short_side=224, views='5x1')),
                aliases=('mvit_32x3',))
def mvit_base_32x3(pretrained: Optional[Any] = None, **overrides: Any) -> MViT:
    """MViT-B 32x3 (36.6M + larger temporal table, K400 80.2 / 80.3 top-1), 32 frames at stride 3, 224 px."""
    args = dict(num_frames=32, drop_path_rate=0.3)
    return _create_mvit(pretrained, **dict(args, **overrides))

"""Train step of every vtk family against its reference, fp32 and bf16, with MFU and peak memory, in one run.

One step = forward (under autocast for bf16) + cross-entropy on fp32 logits + backward + AdamW. For each family the
four steps (vtk fp32, reference fp32, vtk bf16, reference bf16) run interleaved (the order flips every round)
after warm-up, and medians are reported, so load changes on a shared machine hit every one alike. Where a
converter exists the reference's weights are loaded into vtk's model (the same network, not just the same shape).

Families and references:
    vit_b        vtk ``vit_base_patch16_224``          timm ``vit_base_patch16_224``
    swin_t       vtk ``swin_tiny_patch4_window7_224``  timm ``swin_tiny_patch4_window7_224``
    unetr        vtk ``unetr``                         MONAI ``UNETR``
    swin_unetr   vtk ``swin_unetr``                    MONAI ``SwinUNETR``
    transunet    vtk ``transunet``                     timm R50+ViT-B/16 hybrid + the official DecoderCup/SegmentationHead
                                                       (Beckschen/TransUNet ``vit_seg_modeling.py``) re-typed here
    medt         vtk ``medt``                          none (the official code loops over 4x4 patches in Python; no
                                                       library has MedT): vtk alone, MFU and memory only
    timesformer  vtk ``timesformer_base_patch16_224``  HF ``TimesformerForVideoClassification``
    vivit        vtk ``vivit_base_16x2_224``           HF ``VivitForVideoClassification``
    stam         vtk ``stam_16``                       timm ViT per frame + ``nn.TransformerEncoder`` over frames,
                                                       sequence-first (the official STAM ``TAggregate``)
    vtn          vtk ``vtn_vit_base``                  timm ViT per frame + HF ``LongformerModel`` with global
                                                       attention on the class token (the official VTN code)
    mvit         vtk ``mvit_base_16x4``                pytorchvideo ``create_multiscale_vision_transformers``

Reported per family: median seconds per step; ``x`` = reference time / vtk time (> 1: vtk faster) at equal
precision and for the defaults (vtk ``--precision auto`` against the reference's fp32); GFLOP per step (matmuls,
convolutions and attention, forward + backward, by ``torch.utils.flop_counter``); MFU = FLOP/s of the step over
the matrix-multiply rate of the same dtype, measured in the same rounds (one 2048^3 product a round, beside the
steps: ``rates`` in the JSON rows; the rate the header shows is the start's); peak memory of a step in a fresh
subprocess (the peak of the bytes live in tensors: ``max_memory_allocated`` on CUDA,
:class:`benchmarks._common.TensorPeak` on the CPU; the JSON rows also carry the CPU's RSS growth, ``rss_mib``, and
every round's seconds, ``samples``, with the spread of the per-round ratios, ``rounds``). ``vtk/default`` runs
with the engine's C heap policy (``retain``, :mod:`engine.heap`), every other step with glibc's.

The memory probes run first: on the CPU a family whose steps would not be resident at once (:func:`check_fits`)
is skipped with a line that says what it needs, and the exit status is 1. ``--out`` and ``--json`` are written
again after every family, so a run that stops keeps the rows it has.

Sizes: ``tiny`` (narrow models, seconds: tests and dry runs), ``small`` (the real architectures, batch 1 and
reduced clips/volumes: minutes on a 2-core CPU), ``full`` (the papers' training inputs).

Usage::

    nice python -m benchmarks.train_step_suite --size small --out docs/train_step_small.md
    vtk bench train-step --family vit_b,timesformer --precision 32,bf16 --size full --steps 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from engine.progress import ItemProgress  # noqa: E402

from benchmarks._common import (TensorPeak, count_flops, interleaved_samples, matrix_product,  # noqa: E402
                                matrix_rate, peak_rss_mib, reset_peak_rss, round_ratios, rss_mib, run_json_subprocess,
                                subprocess_env, sync)

__all__ = ["main", "FAMILIES", "SIZES", "OPTIMIZERS", "Case", "build_case", "make_step", "run_family",
           "format_table", "plain_adamw", "engine_adamw", "default_precisions", "check_fits", "mem_available_mib"]

SIZES = ("tiny", "small", "full")
PRECISIONS = ("32", "bf16")
Fwd = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class Case:
    """One family at one size: how to build both models, the batch, and how each model is called.

    Attributes:
        family: Key in :data:`FAMILIES`.
        config: Human-readable model and input.
        reference: What the reference is (``""``: none).
        build_ref: ``() -> reference model`` (``None``: no reference).
        build_vtk: ``(reference state dict or None) -> vtk model`` (the state dict shares the weights).
        shape: Input shape with the batch.
        num_classes: Classes of the logits.
        dense: Per-pixel/voxel logits ``(B, K, *S)`` (segmentation) instead of ``(B, K)``.
        ref_fwd: How the reference is called (``m(x)`` by default).
        tokens: Tokens per batch that the model's attention sees in its first stage (for tokens/s).
    """

    family: str
    config: str
    reference: str
    build_ref: Optional[Callable[[], nn.Module]]
    build_vtk: Callable[[Optional[Dict[str, torch.Tensor]]], nn.Module]
    shape: Tuple[int, ...]
    num_classes: int
    dense: bool = False
    ref_fwd: Optional[Fwd] = None
    tokens: int = 0


def _call(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)


def _hf_video(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(pixel_values=x.transpose(1, 2)).logits  # HF video models take (B, T, C, H, W)


# --------------------------------------------------------------------------------------------- reference modules
class _Conv2dReLU(nn.Sequential):
    """Official TransUNet ``Conv2dReLU``: conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _DecoderBlock(nn.Module):
    """Official TransUNet ``DecoderBlock``: ``UpsamplingBilinear2d(2)`` -> concat skip -> 2 x Conv2dReLU."""

    def __init__(self, cin: int, cout: int, skip: int) -> None:
        super().__init__()
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)
        self.conv1, self.conv2 = _Conv2dReLU(cin + skip, cout), _Conv2dReLU(cout, cout)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class TransUNetReference(nn.Module):
    """timm's R50+ViT-B/16 hybrid encoder with the official TransUNet ``DecoderCup`` and ``SegmentationHead``
    (Chen et al., arXiv:2102.04306; Beckschen/TransUNet ``networks/vit_seg_modeling.py``), skips hooked from the
    ResNetV2 stem (64 @ 1/2) and stages 1-2 (256 @ 1/4, 512 @ 1/8) as the official ``ResNetV2.forward`` returns."""

    def __init__(self, img_size: int, num_classes: int, layers=(3, 4, 9), embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, decoder=(256, 128, 64, 16)) -> None:
        super().__init__()
        from timm.models import vision_transformer_hybrid as hybrid

        backbone = hybrid._resnetv2(tuple(layers))
        self.encoder = hybrid._create_vision_transformer_hybrid(
            "vit_base_r50_s16_224", backbone=backbone, pretrained=False, img_size=img_size, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, num_classes=0)
        self._skips: List[torch.Tensor] = []
        for m in (backbone.stem.norm, backbone.stages[0], backbone.stages[1]):
            m.register_forward_hook(lambda _m, _i, out: self._skips.append(out))
        self.conv_more = _Conv2dReLU(embed_dim, 512)
        cins, skips = [512, *decoder[:-1]], [512, 256, 64, 0]
        self.blocks = nn.ModuleList(_DecoderBlock(i, o, s) for i, o, s in zip(cins, decoder, skips))
        self.head = nn.Conv2d(decoder[-1], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._skips.clear()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)  # the official forward repeats grayscale to RGB
        tokens = self.encoder.forward_features(x)[:, 1:]  # (B, N, D) without the class token
        B, N, D = tokens.shape
        h = int(math.isqrt(N))
        feat = self.conv_more(tokens.transpose(1, 2).reshape(B, D, h, h))  # (B, 512, H/16, W/16)
        skips = self._skips[::-1]  # 1/8, 1/4, 1/2
        for i, block in enumerate(self.blocks):
            feat = block(feat, skips[i] if i < len(skips) else None)
        return self.head(feat)  # (B, K, H, W)


class STAMReference(nn.Module):
    """The official STAM (Sharir et al., arXiv:2103.13915; Alibaba-MIIL/STAM): a timm ViT per frame (no qkv bias,
    LayerNorm eps 1e-5) and ``TAggregate``, an ``nn.TransformerEncoder`` over ``[CLS] + frames``, sequence-first."""

    def __init__(self, num_frames: int, num_classes: int, temporal_depth: int = 6, temporal_heads: int = 8,
                 temporal_mlp_dim: int = 2048, **vit: Any) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = VisionTransformer(num_classes=0, qkv_bias=False, norm_layer=partial(nn.LayerNorm, eps=1e-5), **vit)
        D = self.vit.embed_dim
        layer = nn.TransformerEncoderLayer(D, temporal_heads, temporal_mlp_dim, 0.1)
        self.transformer_enc = nn.TransformerEncoder(layer, temporal_depth, norm=nn.LayerNorm(D),
                                                     enable_nested_tensor=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_frames + 1, D))
        self.head = nn.Linear(D, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        f = self.vit(x.transpose(1, 2).reshape(B * T, C, H, W)).view(B, T, -1)  # (B, T, D)
        f = torch.cat([self.cls_token.expand(B, -1, -1), f], dim=1) + self.pos_embed
        return self.head(self.transformer_enc(f.transpose(0, 1))[0])  # (B, K)


class VTNReference(nn.Module):
    """The official VTN (Neimark et al., arXiv:2102.00719; bomri/SlowFast ``vtn.py``): a timm ViT per frame, HF's
    ``LongformerModel`` over ``[CLS] + frames`` (padded to the window, global attention on ``[CLS]``) and an MLP
    head."""

    def __init__(self, num_frames: int, num_classes: int, temporal_depth: int = 3, temporal_heads: int = 12,
                 temporal_mlp_dim: int = 3072, attention_window: int = 18, **vit: Any) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer
        from transformers import LongformerConfig, LongformerModel

        self.vit = VisionTransformer(num_classes=0, **vit)
        D = self.vit.embed_dim
        self.window = attention_window
        n = -(-(num_frames + 1) // attention_window) * attention_window
        cfg = LongformerConfig(hidden_size=D, num_hidden_layers=temporal_depth, num_attention_heads=temporal_heads,
                               intermediate_size=temporal_mlp_dim, attention_window=[attention_window] * temporal_depth,
                               max_position_embeddings=n + 2, vocab_size=2, pad_token_id=-1)
        self.temporal = LongformerModel(cfg, add_pooling_layer=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, temporal_mlp_dim), nn.GELU(), nn.Dropout(0.5),
                                  nn.Linear(temporal_mlp_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        f = self.vit(x.transpose(1, 2).reshape(B * T, C, H, W)).view(B, T, -1)  # (B, T, D)
        f = torch.cat([self.cls_token.expand(B, -1, -1), f], dim=1)  # (B, 1 + T, D)
        pad = -f.shape[1] % self.window
        f = F.pad(f, (0, 0, 0, pad))
        mask = torch.ones(B, f.shape[1], dtype=torch.long, device=x.device)
        mask[:, f.shape[1] - pad:] = 0
        glob = torch.zeros_like(mask)
        glob[:, 0] = 1
        out = self.temporal(inputs_embeds=f, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        return self.head(out[:, 0])  # (B, K)


# ---------------------------------------------------------------------------------------------------- families
def _lib(name: str) -> Any:
    """Import a reference library when its model is built, so a missing one only costs its reference."""
    import importlib

    return importlib.import_module(name)


def _pick(size: str, tiny: Any, small: Any, full: Any) -> Any:
    return {"tiny": tiny, "small": small, "full": full}[size]


def _vit_b(size: str) -> Case:
    from backbones import create_model

    kw = _pick(size, dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), {}, {})
    img, batch = _pick(size, (32, 2), (224, 1), (224, 4))
    ref = lambda: _lib("timm").create_model("vit_base_patch16_224", num_classes=1000, **kw)  # noqa: E731
    vtk = lambda sd: create_model("vit_base_patch16_224", pretrained=sd, num_classes=1000, **kw)  # noqa: E731
    n = (img // kw.get("patch_size", 16)) ** 2 + 1
    return Case("vit_b", f"ViT-B/16 {img}^2 b{batch}" if not kw else f"ViT tiny {img}^2 b{batch}", "timm", ref, vtk,
                (batch, 3, img, img), 1000, tokens=batch * n)


def _swin_t(size: str) -> Case:
    from backbones import create_model

    kw = _pick(size, dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4), {}, {})
    img, batch = _pick(size, (32, 2), (224, 1), (224, 4))
    ref = lambda: _lib("timm").create_model("swin_tiny_patch4_window7_224", num_classes=1000, **kw)  # noqa: E731
    vtk = lambda sd: create_model("swin_tiny_patch4_window7_224", pretrained=sd, num_classes=1000, **kw)  # noqa
    return Case("swin_t", f"Swin-T {img}^2 b{batch}" if not kw else f"Swin tiny {img}^2 b{batch}", "timm", ref, vtk,
                (batch, 3, img, img), 1000, tokens=batch * (img // 4) ** 2)


def _unetr(size: str) -> Case:
    import medvit

    img, f, dim, heads, batch = _pick(size, (32, 4, 32, 2, 1), (64, 16, 768, 12, 1), (96, 16, 768, 12, 1))
    K = 14
    ref = lambda: _lib("monai.networks.nets").UNETR(in_channels=1, out_channels=K, img_size=(img,) * 3, feature_size=f, hidden_size=dim,  # noqa
                        mlp_dim=4 * dim, num_heads=heads, proj_type="perceptron")
    vtk = lambda sd: medvit.create_model("unetr", pretrained=sd, img_size=(img,) * 3, feature_size=f,  # noqa: E731
                                         embed_dim=dim, num_heads=heads, num_classes=K)
    return Case("unetr", f"UNETR {img}^3 f{f} D{dim} b{batch}", "MONAI", ref, vtk, (batch, 1, img, img, img), K,
                dense=True, tokens=batch * (img // 16) ** 3)


def _swin_unetr(size: str) -> Case:
    import medvit

    img, f, batch = _pick(size, (64, 12, 1), (64, 48, 1), (96, 48, 1))
    depths = _pick(size, (1, 1, 1, 1), (2, 2, 2, 2), (2, 2, 2, 2))
    K = 14
    ref = lambda: _lib("monai.networks.nets").SwinUNETR(in_channels=1, out_channels=K, feature_size=f, depths=depths)  # noqa: E731
    vtk = lambda sd: medvit.create_model("swin_unetr", pretrained=sd, img_size=img, in_chans=1,  # noqa: E731
                                         num_classes=K, feature_size=f, depths=depths)
    return Case("swin_unetr", f"Swin-UNETR {img}^3 f{f} b{batch}", "MONAI", ref, vtk, (batch, 1, img, img, img), K,
                dense=True, tokens=batch * (img // 2) ** 3)


def _transunet(size: str) -> Case:
    import medvit

    kw = _pick(size, dict(layers=(1, 1, 1), embed_dim=32, depth=2, num_heads=2), {}, {})
    img, batch = _pick(size, (32, 2), (224, 1), (224, 4))
    K = 9
    ref = lambda: TransUNetReference(img, K, **kw)  # noqa: E731
    vtk = lambda sd: medvit.create_model("transunet", img_size=img, num_classes=K, **kw)  # noqa: E731
    return Case("transunet", f"TransUNet R50-ViT-B {img}^2 b{batch}" if not kw else f"TransUNet tiny {img}^2",
                "timm hybrid + official decoder (re-typed)", ref, vtk, (batch, 1, img, img), K, dense=True,
                tokens=batch * (img // 16) ** 2)


def _medt(size: str) -> Case:
    import medvit

    kw = _pick(size, dict(layers=(1, 1, 1, 1), local_patches=2), {}, {})
    img, batch = _pick(size, (32, 2), (128, 1), (128, 4))
    vtk = lambda sd: medvit.create_model("medt", img_size=img, num_classes=2, **kw)  # noqa: E731
    return Case("medt", f"MedT {img}^2 b{batch}", "", None, vtk, (batch, 3, img, img), 2, dense=True,
                tokens=batch * (img // 2) ** 2)


def _video_kw(size: str) -> Tuple[dict, int, int, int]:
    kw = _pick(size, dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), {}, {})
    img, frames, batch = _pick(size, (32, 4, 1), (112, 8, 1), (224, 8, 1))
    return kw, img, frames, batch


def _hf_common(kw: dict, img: int, K: int) -> dict:
    D, L, H = kw.get("embed_dim", 768), kw.get("depth", 12), kw.get("num_heads", 12)
    return dict(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=4 * D, num_labels=K,
                image_size=img, patch_size=kw.get("patch_size", 16))


def _timesformer(size: str) -> Case:
    import videovit

    kw, img, frames, batch = _video_kw(size)
    K = 400

    def ref() -> nn.Module:
        tr = _lib("transformers")
        return tr.TimesformerForVideoClassification(tr.TimesformerConfig(num_frames=frames, **_hf_common(kw, img, K)))

    vtk = lambda sd: videovit.create_model("timesformer_base_patch16_224", pretrained=sd, num_frames=frames,  # noqa
                                           num_classes=K, drop_path_rate=0.0, **{"img_size": img, **kw})
    n = (img // kw.get("patch_size", 16)) ** 2
    return Case("timesformer", f"TimeSformer divST {frames}x{img}^2 b{batch}", "HF transformers", ref, vtk,
                (batch, 3, frames, img, img), K, ref_fwd=_hf_video, tokens=batch * frames * n)


def _vivit(size: str) -> Case:
    import videovit

    kw, img, frames, batch = _video_kw(size)
    frames *= 2  # ViViT's tubelets are 2 frames deep
    K = 400
    patch = kw.get("patch_size", 16)

    def ref() -> nn.Module:
        tr = _lib("transformers")
        cfg = tr.VivitConfig(num_frames=frames, **_hf_common(kw, img, K))
        cfg.tubelet_size = [2, patch, patch]
        return tr.VivitForVideoClassification(cfg)

    vtk = lambda sd: videovit.create_model("vivit_base_16x2_224", pretrained=sd, num_frames=frames,  # noqa: E731
                                           num_classes=K, drop_path_rate=0.0, **{"img_size": img, **kw})
    n = (img // patch) ** 2 * frames // 2
    return Case("vivit", f"ViViT model 1 {frames}x{img}^2 b{batch}", "HF transformers", ref, vtk,
                (batch, 3, frames, img, img), K, ref_fwd=_hf_video, tokens=batch * n)


def _stam(size: str) -> Case:
    import videovit

    kw, img, frames, batch = _video_kw(size)
    frames *= 2
    K = 400
    temporal = _pick(size, dict(temporal_depth=1, temporal_heads=2, temporal_mlp_dim=64), {}, {})
    ref = lambda: STAMReference(frames, K, **{"img_size": img, **kw, **temporal})  # noqa: E731
    vtk = lambda sd: videovit.create_model("stam_16", num_frames=frames, num_classes=K, drop_path_rate=0.0,  # noqa
                                           **{"img_size": img, **kw, **temporal})
    n = (img // kw.get("patch_size", 16)) ** 2 + 1
    return Case("stam", f"STAM {frames}x{img}^2 b{batch}", "timm ViT + nn.TransformerEncoder (official STAM)",
                ref, vtk, (batch, 3, frames, img, img), K, tokens=batch * frames * n)


def _vtn(size: str) -> Case:
    import videovit

    kw, img, frames, batch = _video_kw(size)
    frames *= 2
    K = 400
    temporal = _pick(size, dict(temporal_depth=1, temporal_heads=2, temporal_mlp_dim=64, attention_window=4), {}, {})
    ref = lambda: VTNReference(frames, K, **{"img_size": img, **kw, **temporal})  # noqa: E731
    vtk = lambda sd: videovit.create_model("vtn_vit_base", num_frames=frames, num_classes=K, drop_path_rate=0.0,  # noqa
                                           **{"img_size": img, **kw, **temporal})
    n = (img // kw.get("patch_size", 16)) ** 2 + 1
    return Case("vtn", f"VTN ViT-B + Longformer {frames}x{img}^2 b{batch}",
                "timm ViT + HF Longformer (official VTN)", ref, vtk, (batch, 3, frames, img, img), K,
                tokens=batch * frames * n)


def _mvit(size: str) -> Case:
    import videovit

    img, frames, batch = _pick(size, (32, 4, 1), (112, 16, 1), (224, 16, 1))

    def ref() -> nn.Module:
        cfg = dict(_lib("pytorchvideo.models.hub.vision_transformers").mvit_video_base_config, spatial_size=img,
                   temporal_size=frames)
        return _lib("pytorchvideo.models.vision_transformers").create_multiscale_vision_transformers(**cfg)

    vtk = lambda sd: videovit.create_model("mvit_base_16x4", pretrained=sd, img_size=img, num_frames=frames,  # noqa
                                           drop_path_rate=0.0)
    return Case("mvit", f"MViT-B {frames}x{img}^2 b{batch}", "pytorchvideo", ref, vtk, (batch, 3, frames, img, img),
                400, tokens=batch * (frames // 2) * (img // 4) ** 2)


FAMILIES: Dict[str, Callable[[str], Case]] = {
    "vit_b": _vit_b, "swin_t": _swin_t, "unetr": _unetr, "swin_unetr": _swin_unetr, "transunet": _transunet,
    "medt": _medt, "timesformer": _timesformer, "vivit": _vivit, "stam": _stam, "vtn": _vtn, "mvit": _mvit}


def build_case(family: str, size: str, batch: Optional[int] = None) -> Case:
    """The :class:`Case` of ``family`` at ``size``; ``batch`` replaces the size's batch (``None``: keep it)."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {', '.join(SIZES)}")
    case = FAMILIES[family](size)
    if batch is None or batch == case.shape[0]:
        return case
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return dataclasses.replace(case, shape=(batch, *case.shape[1:]), tokens=case.tokens // case.shape[0] * batch,
                               config=re.sub(r" b\d+$", "", case.config) + f" b{batch}")


def build_models(case: Case, device: torch.device, share: bool = True) -> Tuple[nn.Module, Optional[nn.Module]]:
    """``(vtk, reference)`` in train mode on ``device``; with ``share`` the reference's weights are loaded into vtk's
    model where its converter reads them (else vtk keeps its own init: the timing is the same network's)."""
    torch.manual_seed(0)
    ref = case.build_ref() if case.build_ref is not None else None
    vtk = None
    if share and ref is not None:
        try:
            vtk = case.build_vtk(ref.state_dict())
        except Exception:  # noqa: BLE001 - no converter for this reference: same architecture, own weights
            vtk = None
    if vtk is None:
        vtk = case.build_vtk(None)
    vtk = vtk.to(device).train()
    return vtk, (ref.to(device).train() if ref is not None else None)


def plain_adamw(model: nn.Module) -> torch.optim.Optimizer:
    """``torch.optim.AdamW(model.parameters())`` as the references' scripts and tutorials build it (on CPU that is
    torch's per-parameter loop)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-5)


def engine_adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``vtk seg train`` / ``vtk video train`` build: ``engine.optim.build_optimizer`` (AdamW over
    the decay / no-decay groups with torch's fused kernel where the parameters allow it)."""
    from engine.config import TrainConfig
    from engine.optim import build_optimizer

    return build_optimizer(model, TrainConfig(lr=1e-5))


def engine_adamw_loop(model: nn.Module) -> torch.optim.Optimizer:
    """:func:`engine_adamw` with torch's default implementation (what the engine built before issue 14)."""
    from engine.config import TrainConfig
    from engine.optim import build_optimizer

    return build_optimizer(model, TrainConfig(lr=1e-5), fast=False)


OPTIMIZERS: Dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "plain": plain_adamw, "engine": engine_adamw, "engine-loop": engine_adamw_loop}


def make_step(model: nn.Module, case: Case, precision: str, device: torch.device, fwd: Optional[Fwd] = None,
              seed: int = 0, optimizer: str = "plain") -> Callable[[], None]:
    """One train step of ``model`` on a fixed batch: forward under ``precision``'s autocast, fp32 cross-entropy,
    backward, AdamW (``optimizer``: a key of :data:`OPTIMIZERS`)."""
    from engine.context import autocast_for

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.shape, generator=g).to(device)
    y_shape = (case.shape[0], *case.shape[2:]) if case.dense else (case.shape[0],)
    y = torch.randint(0, case.num_classes, y_shape, generator=g).to(device)
    fwd = fwd or _call
    opt = OPTIMIZERS[optimizer](model)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            logits = fwd(model, x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


class ChildStep:
    """vtk's default train step (``auto``, the engine's optimizer and C heap policy) run in a fresh process, one
    step per call, so that the parent process never calls ``mallopt``.

    glibc's default heap raises its mmap threshold as a process frees large blocks; once ``mallopt`` has set a
    threshold (the engine's ``retain``, or ``system``) nothing gives that dynamic behaviour back. Timing the
    references in a process that applied the engine's policy once would run their default use on a fixed 128 KiB
    threshold instead: measured on the AMD EPYC, MONAI's UNETR 96^3 fp32 step 4.47 s in a process that never
    called ``mallopt`` against 4.76 s after ``system``, timm's ViT-B/16 b4 2.49 against 2.56. The child runs a step
    when called and the parent waits, so :func:`interleaved` still alternates it with the parent's steps.
    """

    def __init__(self, family: str, size: str, batch: Optional[int], threads: int) -> None:
        import subprocess

        args = ["--step-server", family, "--size", size, "--threads", str(threads)]
        args += [] if batch is None else ["--batch", str(batch)]
        self._proc = subprocess.Popen([sys.executable, "-m", "benchmarks.train_step_suite", *args],
                                      env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, bufsize=1)
        self._answer()  # built and warm

    def _answer(self) -> None:
        reply = self._proc.stdout.readline().strip()
        if reply != "ok":
            self._proc.kill()
            raise RuntimeError(f"vtk/default step process: {reply or f'exited {self._proc.wait()}'}")

    def __call__(self) -> None:
        self._proc.stdin.write("step\n")
        self._answer()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.write("stop\n")
            self._proc.stdin.close()
            self._proc.wait(60)


def step_server(family: str, size: str, batch: Optional[int], threads: int) -> int:
    """The process of :class:`ChildStep` (``--step-server``): apply the engine's heap policy, build vtk's model
    (its own seeded init: the same network, so the same time), warm it up and run one default step per ``step``
    line on stdin, answering ``ok`` on stdout, until ``stop``."""
    out = sys.stdout
    sys.stdout = sys.stderr  # only the protocol on stdout
    try:
        return _serve_steps(family, size, batch, threads, out)
    finally:
        sys.stdout = out


def _serve_steps(family: str, size: str, batch: Optional[int], threads: int, out) -> int:
    try:
        from engine.config import TrainConfig
        from engine.context import resolve_precision
        from engine.heap import set_cpu_heap

        torch.set_num_threads(threads)
        set_cpu_heap(TrainConfig().cpu_heap)
        dev = torch.device("cpu")
        case = build_case(family, size, batch)
        torch.manual_seed(0)
        step = make_step(case.build_vtk(None).to(dev).train(), case, resolve_precision("auto", dev), dev,
                         optimizer="engine")
        step()
    except Exception as e:  # the parent raises it with the message
        print(f"{type(e).__name__}: {e}", file=out, flush=True)
        return 1
    print("ok", file=out, flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        step()
        print("ok", file=out, flush=True)
    return 0


# -------------------------------------------------------------------------------------------------------- memory
def memory_probe(family: str, impl: str, precision: str, size: str, device: str,
                 batch: Optional[int] = None) -> Dict[str, float]:
    """Peak memory of two train steps of one model, measured in this (fresh) process. ``growth_mib``: on CUDA the
    growth of ``max_memory_allocated``, on the CPU the peak of the bytes live in the steps' tensors
    (:class:`benchmarks._common.TensorPeak`, the same quantity, deterministic); ``rss_growth_mib``: peak RSS after
    the steps minus the RSS once the model, optimizer and batch exist (CPU; noisy, see :mod:`benchmarks._common`).
    vtk's step uses the engine's optimizer (:func:`engine_adamw`, what ``vtk ... train`` runs), the reference's
    ``torch.optim.AdamW`` (:func:`plain_adamw`)."""
    dev = torch.device(device)
    case = build_case(family, size, batch)
    torch.manual_seed(0)
    model = (case.build_ref() if impl == "ref" else case.build_vtk(None)).to(dev).train()
    step = make_step(model, case, precision, dev, case.ref_fwd if impl == "ref" else None,
                     optimizer="plain" if impl == "ref" else "engine")
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2 ** 20
        step(), step()
        sync(dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        return {"base_mib": base, "peak_mib": peak, "growth_mib": max(0.0, peak - base)}
    reset_peak_rss()  # the peak of building the model is not the step's
    base = rss_mib()
    with TensorPeak() as tensors:
        step(), step()
    peak = peak_rss_mib()
    return {"base_mib": base, "peak_mib": peak, "rss_growth_mib": max(0.0, peak - base),
            "growth_mib": tensors.peak / 2 ** 20}


def measure_memory(family: str, impl: str, precision: str, size: str, device: torch.device,
                   batch: Optional[int] = None) -> Optional[Dict[str, float]]:
    """:func:`memory_probe` in a fresh subprocess (``None`` if it failed)."""
    return run_json_subprocess("benchmarks.train_step_suite",
                               ["--memory-probe", family, impl, precision, "--size", size, "--device", str(device)]
                               + ([] if batch is None else ["--batch", str(batch)]))


# --------------------------------------------------------------------------------------------------------- suite
def run_family(family: str, size: str, precisions: Sequence[str], steps: int, warmup: int, device: torch.device,
               rates: Dict[str, float], memory: bool = True, batch: Optional[int] = None,
               on_round: Optional[Callable[[], object]] = None) -> Dict[str, Any]:
    """Time, count and (optionally) measure the memory of one family; returns its row (see :func:`format_table`).
    ``on_round`` is called after each of its ``warmup + steps`` rounds.

    Steps timed: ``vtk/P`` and ``ref/P`` per precision ``P``, both with ``torch.optim.AdamW`` (the models alone,
    same optimizer and glibc's heap), and ``vtk/default``: vtk as ``vtk ... train`` runs by default
    (``--precision auto``, the engine's optimizer :func:`engine_adamw` and, on the CPU, its C heap policy, in a
    process of its own: :class:`ChildStep`; the parent's steps run on glibc's untouched heap),
    against which ``ref/32`` (the reference's default use: fp32 and ``torch.optim.AdamW``) gives the ``default``
    speed-up; ``engine`` is ``vtk/<auto>`` over ``vtk/default`` (what the engine's optimizer and heap add).
    """
    from engine.context import resolve_precision

    auto = resolve_precision("auto", device)
    case = build_case(family, size, batch)
    probes = _memory_probes(family, case, precisions, auto, size, device, batch) if memory else {}
    if device.type == "cpu" and probes:
        check_fits(family, probes, auto, [f"{i}/{p}" for p in precisions for i in ("vtk", "ref")])
    vtk, ref = build_models(case, device)
    fns: Dict[str, Callable[[], None]] = {}
    for p in precisions:
        fns[f"vtk/{p}"] = make_step(vtk, case, p, device)
        if ref is not None:
            fns[f"ref/{p}"] = make_step(ref, case, p, device, case.ref_fwd)
    child = ChildStep(family, size, batch, torch.get_num_threads()) if device.type == "cpu" else None
    fns["vtk/default"] = child or make_step(vtk, case, auto, device, optimizer="engine")
    # MFU's denominator, timed in the same rounds: a start-of-run rate moved 615-893 GFLOP/s (bf16) over one session
    products = {p: matrix_product(torch.float32 if p == "32" else torch.bfloat16, device) for p in rates}
    fns.update({f"mm/{p}": fn for p, (fn, _) in products.items()})
    flops = {"vtk": count_flops(make_step(vtk, case, "32", device))}
    if ref is not None:
        flops["ref"] = count_flops(make_step(ref, case, "32", device, case.ref_fwd))
    try:
        samples = interleaved_samples(fns, steps, warmup, device, on_round=on_round)
    finally:
        if child is not None:
            child.close()
    times = {k: statistics.median(v) for k, v in samples.items() if not k.startswith("mm/")}
    row_rates = {p: n_flop / statistics.median(samples[f"mm/{p}"]) for p, (_, n_flop) in products.items()}
    row: Dict[str, Any] = dict(family=family, config=case.config, reference=case.reference or "none",
                               size=size, tokens=case.tokens, flops=flops, times=times, samples=samples,
                               rates=row_rates, matrix_flop={p: f for p, (_, f) in products.items()}, mfu={},
                               speedup={}, rounds={}, memory_mib={}, rss_mib={}, tokens_per_s={})
    for key, t in times.items():
        impl, p = key.split("/")
        p = auto if p == "default" else p
        row["mfu"][key] = flops[impl] / t / row_rates[p] if p in row_rates else None
        row["tokens_per_s"][key] = case.tokens / t
    for p in precisions:
        if f"ref/{p}" in times:
            row["speedup"][p] = times[f"ref/{p}"] / times[f"vtk/{p}"]
            row["rounds"][p] = round_ratios(samples[f"ref/{p}"], samples[f"vtk/{p}"])
    if "ref/32" in times:
        row["speedup"]["default"] = times["ref/32"] / times["vtk/default"]
        row["rounds"]["default"] = round_ratios(samples["ref/32"], samples["vtk/default"])
    if f"vtk/{auto}" in times:
        row["speedup"]["engine"] = times[f"vtk/{auto}"] / times["vtk/default"]  # fused optimizer + heap
    row["default_precision"] = auto
    if memory:
        for p in precisions:
            for impl in ("vtk", "ref") if case.build_ref is not None else ("vtk",):
                probe = probes.get(f"{impl}/{p}", {})  # a failed probe: None, as before the probes ran first
                row["memory_mib"][f"{impl}/{p}"] = probe.get("growth_mib")
                row["rss_mib"][f"{impl}/{p}"] = probe.get("rss_growth_mib")
    return row


def _memory_probes(family: str, case: Case, precisions: Sequence[str], auto: str, size: str,
                   device: torch.device, batch: Optional[int]) -> Dict[str, Dict[str, float]]:
    """:func:`measure_memory` of every step the family times (``vtk/P``, ``ref/P``; ``vtk/<auto>`` too: vtk's
    default step, which the suite runs beside the others), one fresh subprocess each; a failed probe is left out."""
    impls = ("vtk", "ref") if case.build_ref is not None else ("vtk",)
    keys = [f"{impl}/{p}" for p in precisions for impl in impls]
    keys += [] if f"vtk/{auto}" in keys else [f"vtk/{auto}"]
    probes = {}
    for key in keys:
        impl, p = key.split("/")
        probe = measure_memory(family, impl, p, size, device, batch)
        if probe is not None:
            probes[key] = probe
    return probes


# How much more than its probe's two steps a step keeps resident in the suite: measured on Swin-UNETR 96^3 b2
# (AMD EPYC, 24 GiB), the suite's process peaked at 15.0 GiB against a probe of 12.4 (both models' optimizer
# states, glibc's fragments) and the step server at 9.3 GiB against 7.2 (its retained heap after many steps).
_RESIDENT_OVER_PROBE = 1.3


def mem_available_mib() -> Optional[float]:
    """``MemAvailable`` of ``/proc/meminfo`` in MiB (``None`` where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(family: str, probes: Dict[str, Dict[str, float]], auto: str, timed: Sequence[str],
               available_mib: Optional[float] = None) -> None:
    """Refuse a family whose steps cannot be resident at once on this CPU, before the suite builds its models.

    The suite's process runs every ``vtk/P`` and ``ref/P`` step (one at a time, both models built) while vtk's
    default step keeps its own peak in the step server (the engine's ``retain`` heap). So the need is the largest
    of the process's steps and the default step's, each with 30% over its probe (what the suite's processes were
    seen to keep resident beyond it), and the bases (interpreter, model, optimizer) of the server's vtk
    and of the suite's vtk and reference, each from its probe (a step counts the larger of its tensor peak and
    its RSS growth). Swin-UNETR 96^3 at batch 2 needs more than the 24 GiB of the development machine, where the
    kernel's OOM killer ended the whole run without a word (twice).

    Args:
        family: Its name, for the message.
        probes: :func:`memory_probe` results by step (``vtk/32``, ``ref/bf16``, ...); ``vtk/<auto>`` stands for
            the default step.
        auto: The precision ``auto`` resolves to here.
        timed: The steps the suite's own process runs (those of them with a probe count).
        available_mib: The memory there is (default ``MemAvailable``).

    Raises:
        MemoryError: The need exceeds ``available_mib``, with both figures and what to change.
    """
    available_mib = mem_available_mib() if available_mib is None else available_mib
    default = probes.get(f"vtk/{auto}")
    if available_mib is None or default is None:
        return

    def step(p: Dict[str, float]) -> float:
        return max(p.get("growth_mib") or 0.0, p.get("rss_growth_mib") or 0.0)

    parent = [k for k in timed if k in probes]
    if not parent:
        return
    largest = max(parent, key=lambda k: step(probes[k]))
    ref_base = max((v.get("base_mib", 0.0) for k, v in probes.items() if k.startswith("ref/")), default=0.0)
    bases = 2 * default.get("base_mib", 0.0) + ref_base  # the server's and the suite's vtk, the suite's reference
    need = _RESIDENT_OVER_PROBE * (step(probes[largest]) + step(default)) + bases
    if need > available_mib:
        raise MemoryError(
            f"{family}: its steps need about {need / 1024:.1f} GiB at once (the largest, {largest}, "
            f"{step(probes[largest]) / 1024:.1f} GiB, beside vtk's default step, {step(default) / 1024:.1f} GiB, "
            f"each +{_RESIDENT_OVER_PROBE - 1:.0%}, and the models), but {available_mib / 1024:.1f} GiB is "
            f"available: time fewer precisions (--precision) or a smaller --batch")


def _f(v: Optional[float], fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _x(row: Dict[str, Any], key: str) -> str:
    """A speed-up cell: the ratio of the medians, then the spread of the per-round ratios (``lo-hi``, see
    :func:`benchmarks._common.round_ratios`) where the row has it."""
    x, spread = row["speedup"].get(key), row.get("rounds", {}).get(key)
    if x is None or spread is None:
        return _f(x, "{:.2f}")
    return f"{x:.2f} ({spread['lo']:.2f}-{spread['hi']:.2f})"


def format_table(rows: Sequence[Dict[str, Any]], precisions: Sequence[str]) -> str:
    """Markdown table: per precision vtk s, reference s and ``x`` (reference / vtk, both with
    ``torch.optim.AdamW``; in brackets the spread of the per-round ratios: the quartiles from 4 rounds on, the
    extremes below), vtk's default step (``auto`` + the engine's optimizer), its ``x`` against the
    reference's fp32 step and its MFU (against the rate of the ``auto`` dtype: the MFU of the step ``vtk ...
    train`` runs), GFLOP per step (vtk / reference), MFU of vtk and the reference per precision and peak step
    memory (MiB, vtk / reference)."""
    head = ["family", "config", "reference"]
    for p in precisions:
        head += [f"{p} vtk s", f"{p} ref s", f"{p} x"]
    head += ["vtk default s", "default x", "MFU default", "GFLOP vtk/ref"]
    head += [f"MFU {p} vtk/ref" for p in precisions] + [f"mem {p} MiB vtk/ref" for p in precisions]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t, fl, m, mem = r["times"], r["flops"], r["mfu"], r["memory_mib"]
        cells = [r["family"], r["config"], r["reference"]]
        for p in precisions:
            cells += [_f(t.get(f"vtk/{p}")), _f(t.get(f"ref/{p}")), _x(r, p)]
        cells += [_f(t.get("vtk/default")), _x(r, "default"),
                  _f(m.get("vtk/default"), "{:.0%}")]
        cells.append(f"{fl['vtk'] / 1e9:.1f} / {_f(fl.get('ref') and fl['ref'] / 1e9, '{:.1f}')}")
        for p in precisions:
            cells.append(f"{_f(m.get(f'vtk/{p}'), '{:.0%}')} / {_f(m.get(f'ref/{p}'), '{:.0%}')}")
        for p in precisions:
            cells.append(f"{_f(mem.get(f'vtk/{p}'), '{:.0f}')} / {_f(mem.get(f'ref/{p}'), '{:.0f}')}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _parse_list(text: str, choices: Sequence[str], option: str) -> List[str]:
    from engine.choices import check_choice

    values = list(choices) if text == "all" else [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise SystemExit(f"{option}: empty list")
    for v in values:
        check_choice(option, v, choices, error=ValueError)
    return values


def default_precisions(device: torch.device) -> List[str]:
    """``--precision auto``: fp32 and bf16 where ``device`` runs bf16 natively, fp32 alone where it would emulate
    bf16 (a CPU without avx512_bf16 or AMX: its bf16 steps would take many times longer and prove nothing); the
    line printed says which."""
    from engine.context import EMULATED_WHY, resolve_precision

    if resolve_precision("auto", device) == "bf16":
        return ["32", "bf16"]
    why = f"{EMULATED_WHY['bf16']}: emulated bf16 is many times slower" if device.type == "cpu" else "no bf16"
    print(f"bf16 left out: {device} has no native bf16 ({why}); --precision 32,bf16 times it anyway", flush=True)
    return ["32"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="all", help=f"comma-separated: {', '.join(FAMILIES)} (default all)")
    p.add_argument("--precision", default="auto", help="comma-separated: 32, bf16 (default auto: 32 and bf16 "
                   "where the device has native bf16, 32 alone where it would emulate bf16)")
    p.add_argument("--size", default="small", choices=SIZES)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model and precision")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=None, help="batch size instead of the size's own (e.g. 2: the 3D "
                   "recipes' two crops per case)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here (atomically)")
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON here (atomically)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses (and with them the "
                   "check that a family's steps fit in this CPU's memory at once)")
    p.add_argument("--memory-probe", nargs=3, metavar=("FAMILY", "IMPL", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--step-server", metavar="FAMILY", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.step_server:
        return step_server(a.step_server, a.size, a.batch, a.threads or torch.get_num_threads())
    if a.memory_probe:
        fam, impl, prec = a.memory_probe
        print(json.dumps(memory_probe(fam, impl, prec, a.size, a.device, a.batch)))
        return 0
    try:
        families = _parse_list(a.family, list(FAMILIES), "--family")
        device = torch.device(a.device)
        precisions = (default_precisions(device) if a.precision == "auto"
                      else _parse_list(a.precision, PRECISIONS, "--precision"))
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    if a.steps < 1 or a.warmup < 0:
        p.error(f"--steps must be >= 1 and --warmup >= 0, got {a.steps} and {a.warmup}")
    if a.batch is not None and a.batch < 1:
        p.error(f"--batch must be >= 1, got {a.batch}")
    rates = {pr: matrix_rate(torch.float32 if pr == "32" else torch.bfloat16, device) for pr in precisions}
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, size {a.size}, "
          f"steps {a.steps} (+{a.warmup} warm-up); matrix rate " +
          ", ".join(f"{k}: {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()), flush=True)
    header = (f"<!-- python -m benchmarks.train_step_suite --size {a.size} --family {a.family} --precision "
              f"{a.precision} --steps {a.steps}" + (f" --batch {a.batch}" if a.batch else "") +
              f"; device {device}, matrix rate "
              + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()) + " -->\n")
    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, str]] = []
    per_family = a.warmup + a.steps
    with ItemProgress(len(families) * per_family, "train-step", unit="rounds") as bar:
        for i, fam in enumerate(families):
            try:
                row = run_family(fam, a.size, precisions, a.steps, a.warmup, device, rates,
                                 memory=not a.no_memory, batch=a.batch, on_round=lambda: bar.advance(1))
            except MemoryError as e:  # refused before its models were built: the other families still run
                print(f"skipped {e}", file=sys.stderr, flush=True)
                skipped.append(dict(family=fam, why=str(e)))
                bar.advance((i + 1) * per_family - bar.done)
                continue
            rows.append(row)
            print(f"{fam}: " + ", ".join(f"{k} {v:.3f}s" for k, v in row["times"].items()) +
                  "".join(f", x{k} {v:.2f}" for k, v in row["speedup"].items()), flush=True)
            _write(a, header, rows, skipped, precisions, device, rates)  # a run stopped later keeps these rows
    _write(a, header, rows, skipped, precisions, device, rates)
    print((format_table(rows, precisions) if rows else "") + "".join(f"\nskipped {s['why']}" for s in skipped))
    return 1 if skipped else 0


def _write(a: argparse.Namespace, header: str, rows: List[Dict[str, Any]], skipped: List[Dict[str, str]],
           precisions: Sequence[str], device: torch.device, rates: Dict[str, float]) -> None:
    """Write ``--out`` (the table, then one line per skipped family) and ``--json``, atomically."""
    from engine.io import atomic_write_text

    if a.out:
        atomic_write_text(a.out, header + (format_table(rows, precisions) if rows else "") +
                          "".join(f"\nskipped {s['why']}\n" for s in skipped))
    if a.json:
        atomic_write_text(a.json, json.dumps(dict(device=str(device), rates=rates, size=a.size, rows=rows,
                                                  skipped=skipped), indent=1))


if __name__ == "__main__":
    sys.exit(main())

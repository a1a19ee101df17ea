"""MViT checkpoints from pytorchvideo and PySlowFast onto ``videovit.nets.mvit.MViT`` key names.

Fan et al., "Multiscale Vision Transformers", arXiv:2104.11227.

==============  ====================================================  ============================================
source          marker keys                                           mapping
==============  ====================================================  ============================================
pytorchvideo    ``cls_positional_encoding.*``, ``patch_embed.         ``patch_model`` -> ``proj``; positional
                patch_model.*``                                       module prefix stripped; ``attn.{q,k,v}``
                                                                      fused into ``attn.qkv``; ``norm_embed`` ->
                                                                      ``norm``; ``head.proj`` -> ``head``
PySlowFast      ``pos_embed_spatial`` / ``head.projection.*`` with a  identity apart from ``head.projection`` ->
                5D ``patch_embed.proj.weight``                        ``head`` (and ``attn.{q,k,v}`` fused when
                                                                      present)
==============  ====================================================  ============================================
"""

from __future__ import annotations

import re
from typing import Dict

import torch
from torch import nn

from backbones.convert import Converter

__all__ = ["CONVERTERS", "convert_pytorchvideo_mvit", "convert_pyslowfast_mvit", "fuse_qkv", "is_pytorchvideo_mvit",
           "is_pyslowfast_mvit"]

StateDict = Dict[str, torch.Tensor]
_QKV = re.compile(r"^(blocks\.\d+\.attn)\.(q|k|v)\.(weight|bias)$")


def fuse_qkv(sd: StateDict) -> StateDict:
    """Concatenate separate ``attn.q``/``attn.k``/``attn.v`` linears into one ``attn.qkv`` (q | k | v rows)."""
    out, parts = {}, {}
    for k, v in sd.items():
        m = _QKV.match(k)
        if m is None:
            out[k] = v
        else:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ValueError(f"{prefix}: found only {sorted(qkv)} of q/k/v {kind}")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def is_pytorchvideo_mvit(sd: StateDict) -> bool:
    return any(k.startswith(("cls_positional_encoding.", "patch_embed.patch_model.")) for k in sd)


def is_pyslowfast_mvit(sd: StateDict) -> bool:
    w = sd.get("patch_embed.proj.weight")
    has_pos = "pos_embed_spatial" in sd or "pos_embed" in sd
    return w is not None and w.ndim == 5 and has_pos and any(k.startswith("blocks.0.attn.") for k in sd)


def convert_pytorchvideo_mvit(sd: StateDict, model: nn.Module) -> StateDict:
    """pytorchvideo ``MultiscaleVisionTransformers`` -> our MViT (pure; ``model`` is unused)."""
    if any(k.startswith("norm_patch_embed.") for k in sd):
        raise ValueError("pytorchvideo MViT with enable_patch_embed_norm=True is not supported")
    out = {}
    for k, v in sd.items():
        k = k.replace("patch_embed.patch_model.", "patch_embed.proj.")
        k = k.replace("cls_positional_encoding.", "")
        k = k.replace("norm_embed.", "norm.")
        k = k.replace("head.proj.", "head.")
        out[k] = v
    return fuse_qkv(out)


def convert_pyslowfast_mvit(sd: StateDict, model: nn.Module) -> StateDict:
    """PySlowFast ``MViT`` (v1 layout) -> our MViT (pure; ``model`` is unused)."""
    out = {k.replace("head.projection.", "head."): v for k, v in sd.items()}
    return fuse_qkv(out)


CONVERTERS = (Converter("pytorchvideo_mvit", "mvit", is_pytorchvideo_mvit, convert_pytorchvideo_mvit),
              Converter("pyslowfast_mvit", "mvit", is_pyslowfast_mvit, convert_pyslowfast_mvit))

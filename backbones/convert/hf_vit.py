"""Hugging Face ``ViTModel`` / ``ViTForImageClassification`` state dicts -> vtk ViT.

HF transformers' ViT (Dosovitskiy et al., arXiv:2010.11929) keeps separate query/key/value projections; they are
fused into one ``qkv`` (rows q | k | v). Both layouts are accepted: hub checkpoints
(``encoder.layer.{i}.attention.attention.query``, ``attention.output.dense``, ``intermediate.dense``,
``output.dense``) and the transformers 5 in-memory names (``layers.{i}.attention.q_proj``, ``o_proj``,
``mlp.fc1``). The pooler (dense + tanh of ``ViTModel``) and ``mask_token`` have no vtk counterpart and are
dropped. HF uses LayerNorm eps 1e-12: build with ``norm_eps=1e-12`` for identical outputs.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from backbones.convert._base import Converter, StateDict

__all__ = ["CONVERTERS", "convert_hf_vit", "is_hf_vit"]

_LAYER = r"(?:encoder\.layer|layers)\.(\d+)\."
_RENAMES = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (_LAYER + r"layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (_LAYER + r"layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (_LAYER + r"(?:attention\.output\.dense|attention\.o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_LAYER + r"(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
)
_RENAMES_RE = tuple((re.compile(f"^{p}$"), r) for p, r in _RENAMES)
_QKV = re.compile("^" + _LAYER + r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")
_DROP = re.compile(r"^(pooler\.|embeddings\.mask_token$)")


def is_hf_vit(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker keys: ``embeddings.patch_embeddings.projection.weight`` (under an optional ``vit.``)."""
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in sd)


def convert_hf_vit(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Map an HF ViT state dict onto vtk key names (q/k/v fused into ``qkv``; pooler dropped).

    Args:
        sd: HF state dict, with or without the ``vit.`` prefix of ``ViTForImageClassification``.
        model: Target model (unused; resampling and head adaptation happen in the builder).
    """
    out: StateDict = {}
    parts: dict = {}
    for k, v in sd.items():
        k = k[len("vit."):] if k.startswith("vit.") else k
        if _DROP.match(k):
            continue
        m = _QKV.match(k)
        if m:
            i, name, short, leaf = m.groups()
            parts[(int(i), leaf, "qkv".index((name or short)[0]))] = v
            continue
        for pat, repl in _RENAMES_RE:
            if pat.match(k):
                out[pat.sub(repl, k)] = v
                break
        else:
            raise KeyError(f"unknown HF ViT key {k!r}")
    for i, leaf in sorted({(i, leaf) for i, leaf, _ in parts}):
        out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts[(i, leaf, j)] for j in range(3)], dim=0)
    return out


CONVERTERS = (Converter("hf", "vit", detect=is_hf_vit, convert=convert_hf_vit),)

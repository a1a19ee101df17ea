"""HF ``transformers`` ViViT -> vtk ``ViViT`` keys (model 1, e.g. ``google/vivit-b-16x2-kinetics400``).

Arnab et al., "ViViT: A Video Vision Transformer", arXiv:2103.15691. HF keeps separate ``q/k/v`` projections;
they are concatenated into vtk's fused ``qkv`` (rows ``[q; k; v]``, the order :class:`~backbones.layers.Attention`
splits). Both HF layouts are accepted: transformers >= 5 (``vivit.layers.i.attention.{q,k,v,o}_proj``,
``mlp.fc1/fc2``) and the hub files written by earlier versions (``vivit.encoder.layer.i.attention.attention.
{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``). HF's Conv3d kernel
``(D, C, t, p, p)`` already matches vtk's ``TubeletEmbed``. The ``VivitModel`` pooler is dropped.

A second converter claims vtk's own ViViT state dicts (a 5D ``patch_embed.proj.weight`` without prefix).
"""

from __future__ import annotations

import re
from typing import Dict, Mapping

import torch
from torch import nn

from backbones.convert import Converter, StateDict

__all__ = ["CONVERTERS", "convert_hf_vivit", "detect_hf_vivit", "detect_vtk_vivit", "HF_VIVIT_LAYER",
           "HF_VIVIT_TOP"]

HF_VIVIT_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "layernorm.": "norm.",
}
# Per-layer names (``layers.i.`` / ``encoder.layer.i.`` + hf -> ``blocks.i.`` + vtk); q/k/v are fused below.
HF_VIVIT_LAYER = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.o_proj.": "attn.proj.",
    "attention.output.dense.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
}
_QKV = {"attention.q_proj.": 0, "attention.k_proj.": 1, "attention.v_proj.": 2,
        "attention.attention.query.": 0, "attention.attention.key.": 1, "attention.attention.value.": 2}
_LAYER = re.compile(r"(?:layers|encoder\.layer)\.(\d+)\.(.+)")


def detect_hf_vivit(sd: Mapping[str, torch.Tensor]) -> bool:
    """HF marker: ``[vivit.]embeddings.patch_embeddings.projection.weight`` (5D)."""
    w = sd.get("vivit.embeddings.patch_embeddings.projection.weight",
               sd.get("embeddings.patch_embeddings.projection.weight"))
    return w is not None and w.ndim == 5


def detect_vtk_vivit(sd: Mapping[str, torch.Tensor]) -> bool:
    """vtk ViViT keys: an unprefixed 5D tubelet kernel."""
    w = sd.get("patch_embed.proj.weight")
    return w is not None and w.ndim == 5


def _rename(key: str, table: Mapping[str, str]) -> str:
    for src, dst in table.items():
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src):]
    raise KeyError(f"unknown HF ViViT key {key!r}")


def convert_hf_vivit(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Rename HF ViViT keys to vtk's and fuse q/k/v into ``qkv`` (pure)."""
    out: StateDict = {}
    qkv: Dict[str, list] = {}
    for k, v in sd.items():
        key = k[len("vivit."):] if k.startswith("vivit.") else k
        if key.startswith("pooler."):
            continue
        if key.startswith("classifier."):
            out["head." + key[len("classifier."):]] = v
            continue
        m = _LAYER.fullmatch(key)
        if m is None:
            out[_rename(key, HF_VIVIT_TOP)] = v
            continue
        src = next((s for s in _QKV if m[2].startswith(s)), None)
        if src is None:
            out[f"blocks.{m[1]}." + _rename(m[2], HF_VIVIT_LAYER)] = v
        else:
            qkv.setdefault(f"blocks.{m[1]}.attn.qkv.{m[2][len(src):]}", [None] * 3)[_QKV[src]] = v
    for name, chunks in qkv.items():
        if any(c is None for c in chunks):
            raise KeyError(f"{name}: q/k/v incomplete in the HF ViViT checkpoint")
        out[name] = torch.cat(chunks, dim=0)  # (3*D, ...) rows [q; k; v]
    return out


CONVERTERS = (Converter("hf", "vivit", detect=detect_hf_vivit, convert=convert_hf_vivit),
              Converter("vtk", "vivit", detect=detect_vtk_vivit, convert=lambda sd, model: dict(sd)))

"""HF ``transformers`` TimeSformer -> vtk ``TimeSformer`` keys.

Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?", arXiv:2102.05095. Accepts
``TimesformerForVideoClassification`` (``timesformer.*`` + ``classifier``) and ``TimesformerModel`` (no prefix)
state dicts, e.g. ``facebook/timesformer-base-finetuned-k400``. HF keeps the official fused ``qkv``, so the
mapping is a pure renaming. Note HF takes pixel values ``(B, T, C, H, W)``; vtk takes ``(B, C, T, H, W)``.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from backbones.convert import Converter, StateDict

__all__ = ["CONVERTERS", "convert_hf_timesformer", "detect_hf_timesformer", "HF_TIMESFORMER_TOP",
           "HF_TIMESFORMER_LAYER"]

HF_TIMESFORMER_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "layernorm.": "norm.",
}
# Per-layer names (``encoder.layer.i.<hf>`` -> ``blocks.i.<vtk>``); exact module prefixes, so ``output.dense``
# cannot swallow ``attention.output.dense``.
HF_TIMESFORMER_LAYER = {
    "layernorm_before.": "norm1.",
    "attention.attention.qkv.": "attn.qkv.",
    "attention.output.dense.": "attn.proj.",
    "temporal_layernorm.": "temporal_norm1.",
    "temporal_attention.attention.qkv.": "temporal_attn.qkv.",
    "temporal_attention.output.dense.": "temporal_attn.proj.",
    "temporal_dense.": "temporal_fc.",
    "layernorm_after.": "norm2.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
}
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


def detect_hf_timesformer(sd: Mapping[str, torch.Tensor]) -> bool:
    """HF marker: ``[timesformer.]embeddings.position_embeddings`` next to ``encoder.layer.*`` keys."""
    return any(k in sd for k in ("timesformer.embeddings.position_embeddings", "embeddings.position_embeddings")) \
        and any(k.startswith(("timesformer.encoder.layer.", "encoder.layer.")) for k in sd)


def _rename(key: str) -> str:
    m = _LAYER.fullmatch(key)
    if m is not None:
        for src, dst in HF_TIMESFORMER_LAYER.items():
            if m[2].startswith(src):
                return f"blocks.{m[1]}.{dst}{m[2][len(src):]}"
        raise KeyError(f"unknown HF TimeSformer layer key {key!r}")
    for src, dst in HF_TIMESFORMER_TOP.items():
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src):]
    raise KeyError(f"unknown HF TimeSformer key {key!r}")


def convert_hf_timesformer(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Rename HF TimeSformer keys to vtk's (pure; tensors are shared, not copied)."""
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("classifier."):
            out["head." + k[len("classifier."):]] = v
        else:
            out[_rename(k[len("timesformer."):] if k.startswith("timesformer.") else k)] = v
    return out


CONVERTERS = (Converter("hf", "timesformer", detect=detect_hf_timesformer, convert=convert_hf_timesformer),)

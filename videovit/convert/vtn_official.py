"""Official VTN checkpoints (bomri/SlowFast ``projects/vtn``) -> vtk ``VTN`` (:mod:`videovit.nets.vtn`).

Neimark, Bar, Zohar and Asselmann, "Video Transformer Network", arXiv:2102.00719. The official model holds a timm
ViT-B under ``backbone.*``, its temporal ``cls_token``, an HF ``LongformerModel`` as ``temporal_encoder`` and the
``mlp_head``:

=================================================================  ==============================================
official                                                           vtk
=================================================================  ==============================================
``backbone.*``                                                     ``*`` (timm ViT names)
``cls_token``                                                      ``temporal_cls_token``
``temporal_encoder.embeddings.{position,token_type}_embeddings``   ``temporal_embed.{position,token_type}_...``
``temporal_encoder.embeddings.LayerNorm``                          ``temporal_embed.norm``
``temporal_encoder.encoder.layer.i.attention.self.{query,...}``    ``temporal_encoder.blocks.i.attn.qkv`` (fused)
``...attention.self.{query,key,value}_global``                     ``temporal_encoder.blocks.i.attn.qkv_global``
``...attention.output.{dense,LayerNorm}``                          ``temporal_encoder.blocks.i.{attn.proj,norm1}``
``...intermediate.dense``, ``...output.{dense,LayerNorm}``         ``...mlp.fc1``, ``...{mlp.fc2,norm2}``
``mlp_head.*``                                                     ``mlp_head.*``
=================================================================  ==============================================

``position_ids`` buffers, the unused word embeddings and the Longformer pooler are dropped.
"""

from __future__ import annotations

import re
from typing import Dict, Optional

import torch
from torch import nn

from backbones.convert import Converter, StateDict

__all__ = ["CONVERTERS", "convert_vtn_official", "is_vtn_official"]

_HF_LAYER = [  # HF LongformerLayer submodule -> ours (query/key/value are fused separately)
    (r"attention\.output\.dense\.", "attn.proj."),
    (r"attention\.output\.LayerNorm\.", "norm1."),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"output\.dense\.", "mlp.fc2."),
    (r"output\.LayerNorm\.", "norm2."),
]
_LAYER = re.compile(r"^temporal_encoder\.encoder\.layer\.(\d+)\.(.*)$")


def _fuse(parts: Dict[str, Dict[str, torch.Tensor]]) -> StateDict:
    out = {}
    for key, qkv in parts.items():
        if set(qkv) != {"query", "key", "value"}:
            raise ValueError(f"{key}: found only {sorted(qkv)} of query/key/value")
        out[key] = torch.cat([qkv["query"], qkv["key"], qkv["value"]], dim=0)
    return out


def _map_layer(i: str, rest: str, parts: Dict[str, Dict[str, torch.Tensor]], v: torch.Tensor) -> Optional[str]:
    m = re.match(r"attention\.self\.(query|key|value)(_global)?\.(weight|bias)$", rest)
    if m is not None:
        name = "qkv_global" if m.group(2) else "qkv"
        parts.setdefault(f"temporal_encoder.blocks.{i}.attn.{name}.{m.group(3)}", {})[m.group(1)] = v
        return None
    for pat, new in _HF_LAYER:
        if re.match(pat, rest):
            return f"temporal_encoder.blocks.{i}.{new}{re.sub(pat, '', rest, count=1)}"
    raise ValueError(f"unexpected Longformer key temporal_encoder.encoder.layer.{i}.{rest}")


def convert_vtn_official(sd: StateDict, model: nn.Module) -> StateDict:
    """Official VTN (bomri/SlowFast: ``backbone.*`` timm ViT, ``cls_token``, HF ``temporal_encoder``,
    ``mlp_head``) -> our VTN. Pure: ``model`` is unused."""
    out, parts = {}, {}
    emb = {"temporal_encoder.embeddings.position_embeddings.": "temporal_embed.position_embeddings.",
           "temporal_encoder.embeddings.token_type_embeddings.": "temporal_embed.token_type_embeddings.",
           "temporal_encoder.embeddings.LayerNorm.": "temporal_embed.norm."}
    for k, v in sd.items():
        m = _LAYER.match(k)
        if k.startswith("backbone."):
            out[k[len("backbone."):]] = v
        elif k == "cls_token":
            out["temporal_cls_token"] = v
        elif m is not None:
            new = _map_layer(m.group(1), m.group(2), parts, v)
            if new is not None:
                out[new] = v
        elif any(k.startswith(p) for p in emb):
            p = next(p for p in emb if k.startswith(p))
            out[emb[p] + k[len(p):]] = v
        elif k.startswith("mlp_head."):
            out[k] = v
        # other keys (position_ids buffers, the unused word embeddings) are dropped
    out.update(_fuse(parts))
    return out


def is_vtn_official(sd: StateDict) -> bool:
    """Marker keys: HF Longformer layers under ``temporal_encoder.encoder.layer.`` next to ``cls_token``."""
    return any(k.startswith("temporal_encoder.encoder.layer.") for k in sd) and "cls_token" in sd

CONVERTERS = (Converter("vtn_official", "vtn", is_vtn_official, convert_vtn_official),)

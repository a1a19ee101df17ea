"""Official TimeSformer checkpoints (facebookresearch/TimeSformer) and vtk's own TimeSformer keys.

Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?", arXiv:2102.05095. The official
``.pyth`` files hold ``{'model_state': {'model.cls_token', 'model.pos_embed', 'model.time_embed',
'model.patch_embed.proj.*', 'model.blocks.i.{norm1,attn.qkv,attn.proj,temporal_norm1,temporal_attn.qkv,
temporal_attn.proj,temporal_fc,norm2,mlp.fc1,mlp.fc2}.*', 'model.norm.*', 'model.head.*'}, ...}`` (the wrapper
``TimeSformer.model`` is the ``VisionTransformer`` of ``timesformer/models/vit.py``). Its names are vtk's, so the
conversion strips ``model.``; ``backbones._builder.read_checkpoint`` already unwraps ``model_state``.

The second converter claims vtk's own TimeSformer state dicts (``time_embed`` / ``temporal_fc`` without a
prefix) so they are never mistaken for an image ViT by the ``vit`` family's converters.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from backbones.convert import Converter, StateDict, strip_prefix

__all__ = ["CONVERTERS", "convert_official_timesformer", "detect_official_timesformer", "detect_vtk_timesformer"]

_MARKERS = ("cls_token", "pos_embed", "patch_embed.proj.weight")


def detect_official_timesformer(sd: Mapping[str, torch.Tensor]) -> bool:
    """Every key starts with ``model.`` and the ViT markers sit under it (space_only checkpoints have no
    ``time_embed``, so it is not required)."""
    return bool(sd) and all(k.startswith("model.") for k in sd) and all(f"model.{m}" in sd for m in _MARKERS)


def convert_official_timesformer(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Strip the ``model.`` prefix of the official ``TimeSformer`` wrapper."""
    return strip_prefix(sd, "model.")


def detect_vtk_timesformer(sd: Mapping[str, torch.Tensor]) -> bool:
    """vtk / official-unwrapped keys: ``time_embed`` or a ``temporal_fc`` at the top level."""
    return "time_embed" in sd or "blocks.0.temporal_fc.weight" in sd


CONVERTERS = (Converter("official", "timesformer", detect=detect_official_timesformer,
                         convert=convert_official_timesformer),
              Converter("vtk", "timesformer", detect=detect_vtk_timesformer, convert=lambda sd, model: dict(sd)))

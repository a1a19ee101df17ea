"""MONAI Swin weights -> vtk Swin encoder (``SwinTransformer(downsample_last=True)``, e.g. ``swin3d_*``).

Hatamizadeh et al., "Swin UNETR", arXiv:2201.01266; Tang et al., "Self-Supervised Pre-Training of Swin
Transformers for 3D Medical Image Analysis", arXiv:2111.14791 (the ``model_swinvit.pt`` SSL weights).

One key mapping (MONAI ``SwinTransformer`` -> vtk ``SwinTransformer(downsample_last=True)``):

=============================================  ==========================================
MONAI / SSL key                                vtk key
=============================================  ==========================================
``patch_embed.proj.*``                          ``patch_embed.proj.*``
``layers{i}.0.blocks.{j}.attn.*``               ``layers.{i-1}.blocks.{j}.attn.*``
``layers{i}.0.blocks.{j}.mlp.linear1/linear2``  ``layers.{i-1}.blocks.{j}.mlp.fc1/fc2``
``layers{i}.0.blocks.{j}.mlp.fc1/fc2`` (SSL)    ``layers.{i-1}.blocks.{j}.mlp.fc1/fc2``
``layers{i}.0.downsample.{reduction,norm}.*``   ``layers.{i-1}.downsample.*``
``layers{i}c.0.*`` (Swin-UNETR v2)              ``layers.{i-1}.pre_block.*``
``*.relative_position_index``                   dropped (a non-persistent buffer here)
=============================================  ==========================================

Converter ``monai`` (family ``swin``) takes a bare MONAI ``SwinTransformer``, the SSL file
``{"state_dict": {"module.patch_embed...", "module.layers1.0..."}}``, or any state dict holding those keys under
one prefix (a whole segmentation network's encoder). Keys outside the encoder (a decoder, SSL heads) are dropped;
a checkpoint with no encoder key is an error, never a silent no-op (unlike MONAI's ``load_from`` callers that wrap
it in ``try/except``). :func:`monai_swin_key` is public for converters of whole networks built on this encoder.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import torch
from torch import nn

from backbones.convert._base import Converter, StateDict

__all__ = ["CONVERTERS", "convert_monai_swin", "has_final_norm", "is_monai_swin", "monai_swin_key",
           "monai_swin_prefix"]

_MARKERS = ("layers1.0.blocks.0.attn.qkv.weight", "layers1.0.downsample.reduction.weight")
_LAYER = re.compile(r"^layers(\d+)(c?)\.0\.(.+)$")


def monai_swin_prefix(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The prefix in front of MONAI's encoder keys (``""``, ``"module."``, a network's encoder attribute + ``"."``,
    ...), else ``None``."""
    for k in sd:
        for m in _MARKERS:
            if k == m or k.endswith("." + m):
                return k[: len(k) - len(m)]
    return None


def is_monai_swin(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker: a ``layers1.0.blocks.0.attn.qkv.weight`` key under any prefix."""
    return monai_swin_prefix(sd) is not None


def monai_swin_key(key: str, keep_norm: bool = False) -> Optional[str]:
    """One MONAI/SSL encoder key (prefix removed) -> the vtk key, or ``None`` when it has no counterpart."""
    if key.endswith("relative_position_index"):
        return None
    if key.startswith("patch_embed."):
        return key
    if keep_norm and key in ("norm.weight", "norm.bias"):
        return key
    m = _LAYER.match(key)
    if m is None:
        return None
    stage, rest = int(m.group(1)) - 1, m.group(3)
    if m.group(2):
        return f"layers.{stage}.pre_block.{rest}"
    rest = rest.replace("mlp.linear1.", "mlp.fc1.").replace("mlp.linear2.", "mlp.fc2.")
    return f"layers.{stage}.{rest}"


def has_final_norm(model: nn.Module) -> bool:
    """True when ``model`` (a Swin encoder) has a final LayerNorm whose MONAI ``norm.*`` keys are kept."""
    return isinstance(getattr(model, "norm", None), nn.LayerNorm)


def convert_monai_swin(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """MONAI ``SwinTransformer`` / SSL weights (bare or under one prefix) -> a vtk Swin encoder state dict (pure).

    Args:
        sd: The foreign state dict.
        model: A :class:`~backbones.models.swin.SwinTransformer` built with ``downsample_last=True``.

    Raises:
        ValueError: The model is not in MONAI's layout, or no encoder key was found.
    """
    if not getattr(model, "downsample_last", False):
        raise ValueError("MONAI Swin weights need a MONAI-layout model (downsample_last=True), e.g. swin3d_*")
    prefix = monai_swin_prefix(sd)
    if prefix is None:
        raise ValueError("no MONAI Swin encoder keys (layers1.0.blocks.0...) in the checkpoint")
    keep_norm = has_final_norm(model)
    out: StateDict = {}
    for k, v in sd.items():
        new = monai_swin_key(k[len(prefix):], keep_norm) if k.startswith(prefix) else None
        if new is not None:
            out[new] = v
    if not any(k.startswith("layers.") for k in out):
        raise ValueError(f"no MONAI Swin encoder weights under prefix {prefix!r}")
    return out


CONVERTERS = (Converter("monai", "swin", detect=is_monai_swin, convert=convert_monai_swin),)

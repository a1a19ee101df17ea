"""MONAI Swin-UNETR weights -> vtk Swin (encoder) and vtk ``swin_unetr`` (whole network).

Hatamizadeh et al., "Swin UNETR", arXiv:2201.01266; Tang et al., "Self-Supervised Pre-Training of Swin
Transformers for 3D Medical Image Analysis", arXiv:2111.14791 (the ``model_swinvit.pt`` SSL weights).

Three sources, one key mapping (MONAI ``SwinTransformer`` -> vtk ``SwinTransformer(downsample_last=True)``):

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

* ``swin`` family, converter ``monai``: a MONAI ``SwinUNETR`` state dict (``swinViT.`` prefix), a bare MONAI
  ``SwinTransformer``, or the SSL file ``{"state_dict": {"module.patch_embed...", "module.layers1.0..."}}``.
  Keys outside the encoder (decoder, SSL heads) are dropped; a checkpoint with no encoder key is an error, never
  a silent no-op (unlike MONAI's ``load_from`` callers that wrap it in ``try/except``).
* ``swin_unetr`` family, converter ``monai``: a full MONAI ``SwinUNETR`` state dict; ``swinViT.*`` goes through
  the table above and the decoder keys (``encoder1..10``, ``decoder1..5``, ``out``) are kept as they are.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import torch
from torch import nn

from backbones.convert import Converter, StateDict, register_converter

__all__ = ["convert_monai_swin", "convert_monai_swin_unetr", "is_monai_swin", "is_monai_swin_unetr",
           "monai_swin_key"]

_MARKERS = ("layers1.0.blocks.0.attn.qkv.weight", "layers1.0.downsample.reduction.weight")
_LAYER = re.compile(r"^layers(\d+)(c?)\.0\.(.+)$")


def _encoder_prefix(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The prefix in front of MONAI's encoder keys (``""``, ``"swinViT."``, ``"module."``, ...), else ``None``."""
    for k in sd:
        for m in _MARKERS:
            if k == m or k.endswith("." + m):
                return k[: len(k) - len(m)]
    return None


def is_monai_swin(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker: a ``layers1.0.blocks.0.attn.qkv.weight`` key under any prefix."""
    return _encoder_prefix(sd) is not None


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


def _has_final_norm(model: nn.Module) -> bool:
    return isinstance(getattr(model, "norm", None), nn.LayerNorm)


def convert_monai_swin(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """MONAI ``SwinViT`` / ``SwinUNETR`` / SSL weights -> a vtk Swin encoder state dict (pure).

    Args:
        sd: The foreign state dict.
        model: A :class:`~backbones.models.swin.SwinTransformer` built with ``downsample_last=True``.

    Raises:
        ValueError: The model is not in MONAI's layout, or no encoder key was found.
    """
    if not getattr(model, "downsample_last", False):
        raise ValueError("MONAI Swin weights need a MONAI-layout model (downsample_last=True), e.g. swin3d_*")
    prefix = _encoder_prefix(sd)
    if prefix is None:
        raise ValueError("no MONAI Swin encoder keys (layers1.0.blocks.0...) in the checkpoint")
    keep_norm = _has_final_norm(model)
    out: StateDict = {}
    for k, v in sd.items():
        new = monai_swin_key(k[len(prefix):], keep_norm) if k.startswith(prefix) else None
        if new is not None:
            out[new] = v
    if not any(k.startswith("layers.") for k in out):
        raise ValueError(f"no MONAI Swin encoder weights under prefix {prefix!r}")
    return out


def is_monai_swin_unetr(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker: ``swinViT.layers1...`` next to the decoder's ``encoder1``/``out`` keys."""
    return _encoder_prefix(sd) == "swinViT." and any(k.startswith(("encoder1.", "out.")) for k in sd)


def convert_monai_swin_unetr(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """A MONAI ``SwinUNETR`` state dict -> vtk ``swin_unetr`` keys (pure): the encoder is renamed, the
    decoder (``encoder1..10``, ``decoder1..5``, ``out``) keeps MONAI's names."""
    keep_norm = _has_final_norm(getattr(model, "swinViT", model))
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("swinViT."):
            new = monai_swin_key(k[len("swinViT."):], keep_norm)
            if new is not None:
                out["swinViT." + new] = v
        elif not k.endswith("relative_position_index"):
            out[k] = v
    return out


register_converter(Converter("monai", "swin", detect=is_monai_swin, convert=convert_monai_swin))
register_converter(Converter("monai", "swin_unetr", detect=is_monai_swin_unetr, convert=convert_monai_swin_unetr))

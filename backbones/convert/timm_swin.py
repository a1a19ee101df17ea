"""timm / Microsoft ``SwinTransformer`` state dicts -> vtk Swin.

vtk's Swin uses timm's key names (Wightman, pytorch-image-models; Liu et al., arXiv:2103.14030), so timm
checkpoints map one to one apart from the non-persistent buffers (``relative_position_index``, ``attn_mask``)
that older checkpoints stored. The original Microsoft layout (and vtk's MONAI-layout 3D Swin) puts the patch merging
at the *end* of a stage (``layers.0.downsample``), timm at the *start* of the next one (``layers.1.downsample``);
the converter moves the merge keys by one stage when the checkpoint and the model disagree, and renames the
original ``head`` to ``head.fc``. Bias tables of another window size are resampled by
``SwinTransformer.adapt_state_dict``.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from backbones.convert._base import Converter, StateDict

__all__ = ["CONVERTERS", "convert_timm_swin", "is_timm_swin"]

_PREFIXES = ("module.", "model.", "backbone.")
_MARKER = "layers.0.blocks.0.attn.qkv.weight"


def _strip_common_prefix(sd: Mapping[str, torch.Tensor]) -> StateDict:
    for p in _PREFIXES:
        if sd and all(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items()}
    return dict(sd)


def is_timm_swin(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker keys: ``layers.0.blocks.0.attn.qkv.weight`` and a ``patch_embed.proj.weight``."""
    sd = _strip_common_prefix(sd)
    return _MARKER in sd and "patch_embed.proj.weight" in sd


def _move_downsample(key: str, shift: int) -> str:
    return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + shift}.downsample.", key)


def convert_timm_swin(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Map a timm (or original Microsoft) Swin state dict onto ``model``'s keys; the input is not modified.

    Args:
        sd: timm ``SwinTransformer`` state dict, optionally under a ``module.``/``model.``/``backbone.`` prefix.
        model: The target :class:`~backbones.models.swin.SwinTransformer` (only ``downsample_last`` is read).

    Returns:
        The state dict in vtk key names, without stored buffers.
    """
    sd = _strip_common_prefix(sd)
    out = {k: v for k, v in sd.items() if not re.search(r"(relative_position_index|attn_mask)$", k)}
    merge_last = "layers.0.downsample.reduction.weight" in out
    want_last = bool(getattr(model, "downsample_last", False))
    if merge_last != want_last:
        shift = 1 if merge_last else -1
        out = {_move_downsample(k, shift): v for k, v in out.items()}
    if "head.weight" in out:  # original Microsoft / old timm classifier
        out = {("head.fc." + k[5:] if k.startswith("head.") else k): v for k, v in out.items()}
    return out


CONVERTERS = (Converter("timm", "swin", detect=is_timm_swin, convert=convert_timm_swin),)

"""timm ``VisionTransformer`` (and R50+ViT hybrid) state dicts -> vtk ViT.

vtk's 2D ViT and hybrid use timm's key names (Wightman, pytorch-image-models), so the mapping is the identity
apart from keys of timm options vtk does not build (an Identity ``norm_pre``, the removed ``pre_logits``
representation layer). Models that initialise from image ViT weights (e.g. video transformers) list
``VIT_CONVERTERS`` after their own converters and inflate/add their other parts in ``adapt_state_dict``.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from backbones.convert._base import Converter, StateDict

__all__ = ["CONVERTERS", "convert_timm_vit", "is_timm_vit"]

_MODEL_PREFIXES = ("module.", "model.", "backbone.")


def is_timm_vit(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker keys: a fused ``blocks.0.attn.qkv.weight`` next to a ``patch_embed`` (``proj`` or ``backbone``)."""
    keys = set(sd)
    return "blocks.0.attn.qkv.weight" in keys and any(k.startswith("patch_embed.") for k in keys)


def _strip_common_prefix(sd: Mapping[str, torch.Tensor]) -> StateDict:
    for p in _MODEL_PREFIXES:
        if sd and all(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items()}
    return dict(sd)


def convert_timm_vit(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Map a timm ViT state dict onto ``model``'s keys (pure; the input is not modified).

    Args:
        sd: timm ``VisionTransformer`` state dict (optionally under a ``module.``/``model.`` prefix).
        model: Target model; keys it does not have among timm's optional parts (``norm_pre``, ``pre_logits``,
            ``fc_norm``) are dropped.

    Returns:
        The state dict in vtk key names; resampling and head adaptation are left to the builder.
    """
    out = _strip_common_prefix(sd)
    own = set(model.state_dict())
    for opt in ("norm_pre.", "pre_logits.", "fc_norm."):
        if not any(k.startswith(opt) for k in own):
            out = {k: v for k, v in out.items() if not k.startswith(opt)}
    return out


def _detect(sd: Mapping[str, torch.Tensor]) -> bool:
    return is_timm_vit(_strip_common_prefix(sd))


CONVERTERS = (Converter("timm", "vit", detect=_detect, convert=convert_timm_vit),)

"""Weight converters: one pure function per foreign checkpoint format, chosen by marker keys.

A :class:`Converter` maps a foreign state dict onto vtk key names; it never touches the model's parameters and
never resamples (the builder and ``model.adapt_state_dict`` do that). Converters are registered per model
*family* (``"vit"``, ``"vit_hybrid"``, ``"swin"``, ...) and tried in registration order; the first whose
``detect(sd)`` is true wins. :func:`backbones._builder.load_pretrained` strips a ``module.`` prefix shared by every
key (DataParallel/DDP checkpoints) before detection, then falls back to the model's own key names when no
converter claims the checkpoint.

Register a converter from its module (listed in ``_CONVERTER_MODULES`` below, or imported by the model file)::

    register_converter(Converter("timm", "vit", detect=lambda sd: "blocks.0.attn.qkv.weight" in sd,
                                 convert=convert_timm_vit))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Sequence, Union

import torch
from torch import nn

from backbones._imports import import_model_modules

__all__ = [
    "Converter", "register_converter", "converters_for", "find_converter", "has_any", "strip_prefix",
    "StateDict",
]

StateDict = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class Converter:
    """A foreign checkpoint format for one model family.

    Args:
        name: Short source name shown in load reports (``"timm"``, ``"google-npz"``, ``"monai"``, ``"hf"``).
        family: Model family the converted keys belong to (``"vit"``, ``"vit_hybrid"``, ``"swin"``, ...).
        detect: ``detect(sd) -> bool``; looks for marker keys only.
        convert: ``convert(sd, model) -> sd``; a pure key/tensor mapping onto the model's names (transposes,
            qkv fusion/splitting, prefix stripping). It may read the model's configuration but must not modify
            the model or the input dict.
    """

    name: str
    family: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Mapping[str, torch.Tensor], nn.Module], StateDict]


_CONVERTERS: List[Converter] = []


def register_converter(conv: Converter) -> Converter:
    """Add ``conv``; a second converter with the same ``(family, name)`` replaces the first."""
    for i, c in enumerate(_CONVERTERS):
        if (c.family, c.name) == (conv.family, conv.name):
            _CONVERTERS[i] = conv
            return conv
    _CONVERTERS.append(conv)
    return conv


def converters_for(family: Union[str, Sequence[str]]) -> List[Converter]:
    """Registered converters of one family (or of several, in the given family order)."""
    families = [family] if isinstance(family, str) else list(family)
    return [c for f in families for c in _CONVERTERS if c.family == f]


def find_converter(sd: Mapping[str, torch.Tensor], family: Union[str, Sequence[str]]) -> Union[Converter, None]:
    """The first converter of ``family`` whose ``detect`` accepts ``sd``, else ``None``."""
    for conv in converters_for(family):
        if conv.detect(sd):
            return conv
    return None


def has_any(sd: Mapping[str, torch.Tensor], *markers: str) -> bool:
    """True when any key of ``sd`` equals or ends with one of ``markers`` (a prefix-tolerant marker test)."""
    return any(k == m or k.endswith("." + m) or k.endswith("/" + m) for k in sd for m in markers)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Keys starting with ``prefix`` with it removed; other keys are dropped."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# Converter modules registered on import.
_CONVERTER_MODULES = [
    "backbones.convert.timm_vit",
    "backbones.convert.google_npz",
    "backbones.convert.monai_vit",
    "backbones.convert.hf_vit",
    "backbones.convert.timm_swin",
    "backbones.convert.monai_swin",
    "backbones.convert.monai_unetr",
    "backbones.convert.hf_timesformer",
    "backbones.convert.timesformer_official",
    "backbones.convert.hf_vivit",
    "backbones.convert.pytorchvideo_mvit",
]
import_model_modules(_CONVERTER_MODULES)

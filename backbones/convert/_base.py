"""The :class:`Converter` record, marker-key lookup and the small key helpers every converter module shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

__all__ = ["Converter", "StateDict", "find_converter", "converter_label", "has_any", "strip_prefix"]

StateDict = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class Converter:
    """A foreign checkpoint format for one model family.

    Args:
        name: Short source name shown in load reports (``"timm"``, ``"google-npz"``, ``"monai"``, ``"hf"``).
        family: Model family the converted keys belong to (``"vit"``, ``"swin"``, ...); shown in error messages
            and listings.
        detect: ``detect(sd) -> bool``; looks for marker keys only.
        convert: ``convert(sd, model) -> sd``; a pure key/tensor mapping onto the model's names (transposes,
            qkv fusion/splitting, prefix stripping). It may read the model's configuration but must not modify
            the model or the input dict.
    """

    name: str
    family: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Mapping[str, torch.Tensor], nn.Module], StateDict]


def find_converter(sd: Mapping[str, torch.Tensor], converters: Sequence[Converter]) -> Optional[Converter]:
    """The first of ``converters`` (in order) whose ``detect`` accepts ``sd``, else ``None``."""
    for conv in converters:
        if conv.detect(sd):
            return conv
    return None


def converter_label(converters: Sequence[Converter], default: str) -> str:
    """The families of ``converters`` in order, without repeats (``"swin/vit"``), else ``default``."""
    families: List[str] = []
    for conv in converters:
        if conv.family not in families:
            families.append(conv.family)
    return "/".join(families) or default


def has_any(sd: Mapping[str, torch.Tensor], *markers: str) -> bool:
    """True when any key of ``sd`` equals or ends with one of ``markers`` (a prefix-tolerant marker test)."""
    return any(k == m or k.endswith("." + m) or k.endswith("/" + m) for k in sd for m in markers)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Keys starting with ``prefix`` with it removed; other keys are dropped."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

"""Weight converters of the medvit networks, one module per foreign format, composed per model.

Each module declares a ``CONVERTERS`` tuple of pure :class:`backbones.convert.Converter` objects; the entry
points in :mod:`medvit.nets` pass their model's tuple to :func:`backbones._builder.build_model` /
:func:`~backbones._builder.load_pretrained`, which picks the first whose marker keys match (see
:mod:`backbones.convert`).
"""

from __future__ import annotations

from typing import Dict, Tuple

from backbones.convert import SWIN_CONVERTERS, Converter
from medvit.convert import medt_official, monai_swin_unetr, monai_unetr, transunet

__all__ = ["UNETR_CONVERTERS", "SWIN_UNETR_CONVERTERS", "SWIN_UNETR_ENCODER_CONVERTERS", "TRANSUNET_CONVERTERS",
           "MEDT_CONVERTERS", "CONVERTERS"]

UNETR_CONVERTERS: Tuple[Converter, ...] = monai_unetr.CONVERTERS
SWIN_UNETR_CONVERTERS: Tuple[Converter, ...] = monai_swin_unetr.CONVERTERS  # whole networks
SWIN_UNETR_ENCODER_CONVERTERS: Tuple[Converter, ...] = SWIN_CONVERTERS  # encoder-only files, into ``swinViT``
TRANSUNET_CONVERTERS: Tuple[Converter, ...] = transunet.CONVERTERS
MEDT_CONVERTERS: Tuple[Converter, ...] = medt_official.CONVERTERS  # official medt_net state dicts

# Every medvit model family with its converters (for listings and docs).
CONVERTERS: Dict[str, Tuple[Converter, ...]] = {
    "unetr": UNETR_CONVERTERS, "swin_unetr": SWIN_UNETR_CONVERTERS + SWIN_UNETR_ENCODER_CONVERTERS,
    "transunet": TRANSUNET_CONVERTERS, "medt": MEDT_CONVERTERS,
}

"""Weight converters of the videovit networks, one module per foreign format, composed per model.

Each module declares a ``CONVERTERS`` tuple of pure :class:`backbones.convert.Converter` objects. A model's tuple
lists its own video formats first, then (for models that start from image weights) the backbones'
``VIT_CONVERTERS``; the entry points in :mod:`videovit.nets` pass it to :func:`backbones._builder.build_model` /
:func:`~backbones._builder.load_pretrained`, which picks the first whose marker keys match.
"""

from __future__ import annotations

from typing import Dict, Tuple

from backbones.convert import VIT_CONVERTERS, Converter
from videovit.convert import (hf_timesformer, hf_vivit, pytorchvideo_mvit, scenic_vivit, timesformer_official,
                              vtn_official)

__all__ = ["TIMESFORMER_CONVERTERS", "VIVIT_CONVERTERS", "STAM_CONVERTERS", "VTN_CONVERTERS", "MVIT_CONVERTERS",
           "CONVERTERS"]

# HF, official .pyth, vtk TimeSformer; then image ViT weights (inflated by TimeSformer.adapt_state_dict).
TIMESFORMER_CONVERTERS: Tuple[Converter, ...] = (
    hf_timesformer.CONVERTERS + timesformer_official.CONVERTERS + VIT_CONVERTERS)
# Scenic (5D ``embedding/kernel``) before the image Google npz, which shares its marker names.
VIVIT_CONVERTERS: Tuple[Converter, ...] = scenic_vivit.CONVERTERS + hf_vivit.CONVERTERS + VIT_CONVERTERS
STAM_CONVERTERS: Tuple[Converter, ...] = VIT_CONVERTERS
VTN_CONVERTERS: Tuple[Converter, ...] = vtn_official.CONVERTERS + VIT_CONVERTERS
MVIT_CONVERTERS: Tuple[Converter, ...] = pytorchvideo_mvit.CONVERTERS

# Every videovit model family with its converters (for listings and docs).
CONVERTERS: Dict[str, Tuple[Converter, ...]] = {
    "timesformer": TIMESFORMER_CONVERTERS, "vivit": VIVIT_CONVERTERS, "stam": STAM_CONVERTERS,
    "vtn": VTN_CONVERTERS, "mvit": MVIT_CONVERTERS,
}

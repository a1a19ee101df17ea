"""Weight converters of the backbone families: one pure function per foreign checkpoint format.

A :class:`Converter` maps a foreign state dict onto vtk key names; it never touches the model's parameters and
never resamples (the builder and ``model.adapt_state_dict`` do that). Each converter module declares its
converters in a module-level ``CONVERTERS`` tuple; this package composes them per family (``VIT_CONVERTERS``,
``SWIN_CONVERTERS``) and a model's entry point hands its tuple to
:func:`backbones._builder.build_model` / :func:`~backbones._builder.load_pretrained`, which try them in order:
the first whose ``detect(sd)`` is true wins. The loader strips a ``module.`` prefix shared by every key
(DataParallel/DDP checkpoints) before detection, then falls back to the model's own key names when no converter
claims the checkpoint. Pipelines keep the converters of their own models next to them (``<pipeline>/convert/``)
and prepend them to these tuples where a model also accepts image-backbone weights::

    MY_CONVERTERS = (Converter("mine", "my_family", detect=lambda sd: "my.marker" in sd, convert=convert_mine),
                     *VIT_CONVERTERS)
    build_model(MyModel, pretrained, MY_CONVERTERS, **kwargs)
"""

from __future__ import annotations

from typing import Dict, Tuple

from backbones.convert import google_npz, hf_vit, monai_swin, monai_vit, timm_swin, timm_vit
from backbones.convert._base import Converter, StateDict, converter_label, find_converter, has_any, strip_prefix

__all__ = [
    "Converter", "StateDict", "find_converter", "converter_label", "has_any", "strip_prefix",
    "VIT_CONVERTERS", "SWIN_CONVERTERS", "CONVERTERS",
]

# ViT and the R50+ViT hybrid (2D/3D): timm, Google .npz, MONAI ViT, HF ViT, tried in this order.
VIT_CONVERTERS: Tuple[Converter, ...] = (
    timm_vit.CONVERTERS + google_npz.CONVERTERS + monai_vit.CONVERTERS + hf_vit.CONVERTERS)
# Swin (2D timm layout / 3D MONAI layout): timm or original Microsoft, then MONAI SwinViT / SSL.
SWIN_CONVERTERS: Tuple[Converter, ...] = timm_swin.CONVERTERS + monai_swin.CONVERTERS

# Every backbone family with its converters (for listings and docs).
CONVERTERS: Dict[str, Tuple[Converter, ...]] = {"vit": VIT_CONVERTERS, "swin": SWIN_CONVERTERS}

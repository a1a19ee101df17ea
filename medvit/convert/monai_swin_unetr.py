"""A whole MONAI ``SwinUNETR`` state dict -> vtk ``swin_unetr`` (:class:`medvit.nets.swin_unetr.SwinUNETR`).

Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI Images",
arXiv:2201.01266. vtk's Swin-UNETR keeps MONAI's attribute names: the encoder is ``swinViT`` (a vtk
``SwinTransformer(downsample_last=True)``) and the decoder is built from MONAI's own blocks (``encoder1..10``,
``decoder1..5``, ``out``). So ``swinViT.*`` goes through the MONAI Swin key table
(:func:`backbones.convert.monai_swin.monai_swin_key`) and the decoder keys keep their names. Encoder-only files
(SSL ``model_swinvit.pt``, a bare MONAI ``SwinTransformer``) are loaded into ``swinViT`` with the backbone's
``SWIN_CONVERTERS`` instead (see ``SwinUNETR.load_pretrained``).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from backbones.convert import Converter, StateDict
from backbones.convert.monai_swin import has_final_norm, monai_swin_key, monai_swin_prefix

__all__ = ["CONVERTERS", "convert_monai_swin_unetr", "is_monai_swin_unetr"]


def is_monai_swin_unetr(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker: ``swinViT.layers1...`` next to the decoder's ``encoder1``/``out`` keys."""
    return monai_swin_prefix(sd) == "swinViT." and any(k.startswith(("encoder1.", "out.")) for k in sd)


def convert_monai_swin_unetr(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """A MONAI ``SwinUNETR`` state dict -> vtk ``swin_unetr`` keys (pure): the encoder is renamed, the
    decoder (``encoder1..10``, ``decoder1..5``, ``out``) keeps MONAI's names."""
    keep_norm = has_final_norm(getattr(model, "swinViT", model))
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("swinViT."):
            new = monai_swin_key(k[len("swinViT."):], keep_norm)
            if new is not None:
                out["swinViT." + new] = v
        elif not k.endswith("relative_position_index"):
            out[k] = v
    return out


CONVERTERS = (Converter("monai", "swin_unetr", detect=is_monai_swin_unetr, convert=convert_monai_swin_unetr),)

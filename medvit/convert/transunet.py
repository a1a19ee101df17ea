"""Encoder-only checkpoints (Google ``R50+ViT-B_16.npz``, timm ``vit_base_r50_s16_224``) -> vtk ``transunet``.

Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation", arXiv:2102.04306.
TransUNet's encoder is the backbones R50+ViT hybrid under ``encoder.``; each ViT-family converter
(``backbones.convert.VIT_CONVERTERS``) is wrapped so it maps an image-backbone file onto ``encoder.*`` (the
decoder and head stay at init and are listed in the load report). A vtk TransUNet checkpoint (``encoder.*``,
``decoder.*``, ``segmentation_head.*``) is claimed by none of them and loads under its own names.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from backbones.convert import VIT_CONVERTERS, Converter, StateDict

__all__ = ["CONVERTERS", "encoder_only"]


def _is_full(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("decoder.", "segmentation_head.", "encoder.")) for k in sd)


def encoder_only(conv: Converter) -> Converter:
    """Wrap a ViT-family converter so it fills ``encoder.*`` of a TransUNet (pure, like the wrapped one)."""
    def convert(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
        return {f"encoder.{k}": v for k, v in conv.convert(sd, model.encoder).items()}

    return Converter(f"{conv.name} (encoder only)", "transunet",
                     detect=lambda sd: not _is_full(sd) and conv.detect(sd), convert=convert)


CONVERTERS = tuple(encoder_only(conv) for conv in VIT_CONVERTERS)  # Google npz, timm, ... in the ViT order

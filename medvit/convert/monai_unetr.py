"""MONAI ``UNETR`` (and Project-MONAI research-contributions UNETR) checkpoints -> vtk ``medvit`` UNETR.

Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", arXiv:2103.10504. vtk's UNETR
decoder is built from MONAI's own blocks under MONAI's names (``encoder1..n``, ``decoder2..n+1``, ``out``), so
only the ``vit.*`` part is renamed, by the MONAI ``ViT`` converter (:mod:`backbones.convert.monai_vit`):

=================================================  ===========================================
MONAI                                              vtk
=================================================  ===========================================
``vit.patch_embedding.position_embeddings``        ``vit.pos_embed``
``vit.patch_embedding.patch_embeddings.{w,b}``     ``vit.patch_embed.proj.{w,b}`` (conv)
``vit.patch_embedding.patch_embeddings.1.{w,b}``   ``vit.patch_embed.proj.{w,b}`` (perceptron
                                                   Linear over ``(p1 p2 p3 c)`` -> conv kernel)
``vit.blocks.i.attn.out_proj``                     ``vit.blocks.i.attn.proj``
``vit.blocks.i.mlp.linear1`` / ``linear2``         ``vit.blocks.i.mlp.fc1`` / ``fc2``
``vit.blocks.i.norm_cross_attn`` (unused)          dropped
``vit.patch_embedding.cls_token`` (old RC)         ``vit.cls_token``, then dropped by the model
=================================================  ===========================================

Everything else keeps its name. Research-contributions training files (``{epoch, best_acc, state_dict,
optimizer}``) are unwrapped by :func:`backbones._builder.read_checkpoint`; the class token and the ``conv3`` of
old residual blocks are dropped by ``UNETR.adapt_state_dict`` and listed in the load report.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from backbones.convert import Converter, StateDict, has_any
from backbones.convert.monai_vit import convert_monai_vit

__all__ = ["CONVERTERS", "convert_monai_unetr", "is_monai_unetr"]


def is_monai_unetr(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker keys: MONAI's ``vit.patch_embedding.position_embeddings`` next to a UNETR decoder block."""
    return has_any(sd, "vit.patch_embedding.position_embeddings") and has_any(sd, "out.conv.conv.weight")


def convert_monai_unetr(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Map a MONAI ``UNETR`` state dict onto vtk's ``UNETR`` (pure; the ``vit.*`` part goes through
    :func:`backbones.convert.monai_vit.convert_monai_vit`).

    Args:
        sd: MONAI/research-contributions UNETR state dict (a shared ``module.`` prefix already stripped).
        model: The target :class:`medvit.nets.unetr.UNETR`.
    """
    out = {f"vit.{k}": v for k, v in convert_monai_vit(sd, model.vit, prefix="vit.").items()}
    out.update({k: v for k, v in sd.items() if not k.startswith("vit.")})
    return out


CONVERTERS = (Converter("monai", "unetr", detect=is_monai_unetr, convert=convert_monai_unetr),)

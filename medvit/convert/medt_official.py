"""Official MedT state dicts (``medt_net`` of jeya-maria-jose/Medical-Transformer) -> vtk ``MedT`` keys.

Valanarasu et al., "Medical Transformer: Gated Axial-Attention for Medical Image Segmentation", arXiv:2102.10662.
The official module tree (``lib/models/axialnet.py``) has the global branch at the top level (``conv1..3``,
``bn1..3``, ``layer1``, ``layer2``, ``decoder4``, ``decoder5``, ``adjust``) and the local branch with a ``_p``
suffix (``conv1_p``.., ``layer1_p``..``layer4_p``, ``decoder1_p``..``decoder5_p``), then ``decoderf``. Renames:

=================================  ===========================================================
official                           vtk
=================================  ===========================================================
``conv{i}``, ``bn{i}``             ``global_branch.stem.conv{i}``, ``.bn{i}``
``layer{s}.{j}.``                  ``global_branch.stages.{s-1}.{j}.``
``conv{i}_p``, ``bn{i}_p``         ``local_branch.stem.conv{i}``, ``.bn{i}``
``layer{s}_p.{j}.``                ``local_branch.stages.{s-1}.{j}.``
``hight_block`` / ``width_block``  ``height_block`` / ``width_block``
``qkv_transform`` (Conv1d)         ``qkv`` (1x1 Conv2d: a trailing unit dimension)
``bn_qkv``, ``bn_similarity``      ``norm_qkv``, ``norm_logits``
``bn_output``                      ``norm_out``
``decoder4``, ``decoder5``         ``global_decoder.ups.0``, ``global_decoder.out``
``decoder1_p`` .. ``decoder5_p``   ``local_decoder.bottleneck``, ``.ups.0..2``, ``.out``
``decoderf``, ``adjust``           ``fuse``, ``head``
=================================  ===========================================================

Dropped: the ``flatten_index`` buffers (vtk builds the relative indices on the fly) and the modules the official
forward never calls: each ``AxialBlock_wopos.conv1`` of the local branch and ``adjust_p``.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import torch
from torch import nn

from backbones.convert import Converter, StateDict

__all__ = ["CONVERTERS", "convert_medt_official", "is_medt_official"]

_STEM = re.compile(r"^(conv|bn)([123])(_p)?\.(.+)$")
_LAYER = re.compile(r"^layer(\d)(_p)?\.(\d+)\.(.+)$")
_DECODER = {"decoder4.": "global_decoder.ups.0.", "decoder5.": "global_decoder.out.",
            "decoder1_p.": "local_decoder.bottleneck.", "decoder2_p.": "local_decoder.ups.0.",
            "decoder3_p.": "local_decoder.ups.1.", "decoder4_p.": "local_decoder.ups.2.",
            "decoder5_p.": "local_decoder.out.", "decoderf.": "fuse.", "adjust.": "head."}
_IN_ATTN = (("hight_block.", "height_block."), ("qkv_transform.", "qkv."), ("bn_qkv.", "norm_qkv."),
            ("bn_similarity.", "norm_logits."), ("bn_output.", "norm_out."))


def is_medt_official(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker keys of ``medt_net``: the local stem ``conv1_p.weight`` and the block ``layer1_p.0.conv_down``."""
    return "conv1_p.weight" in sd and "layer1_p.0.conv_down.weight" in sd


def _block_key(rest: str) -> Optional[str]:
    """A key inside an official axial block -> vtk, ``None`` for dropped tensors."""
    if rest.endswith("flatten_index") or rest.startswith("conv1."):  # buffer / unused AxialBlock_wopos.conv1
        return None
    for src, dst in _IN_ATTN:
        rest = rest.replace(src, dst)
    return rest


def _map(key: str) -> Optional[str]:
    m = _STEM.match(key)
    if m:
        kind, i, local, leaf = m.groups()
        return f"{'local' if local else 'global'}_branch.stem.{kind}{i}.{leaf}"
    m = _LAYER.match(key)
    if m:
        stage, local, j, rest = m.groups()
        rest = _block_key(rest)
        return None if rest is None else f"{'local' if local else 'global'}_branch.stages.{int(stage) - 1}.{j}.{rest}"
    if key.startswith("adjust_p."):  # the official forward uses ``adjust`` for the fused output
        return None
    for src, dst in _DECODER.items():
        if key.startswith(src):
            return dst + key[len(src):]
    raise KeyError(f"unknown official MedT key {key!r}")


def convert_medt_official(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Rename an official ``medt_net`` state dict to vtk's ``MedT`` (pure).

    Raises:
        KeyError: A key the official ``medt_net`` does not have.
    """
    out: StateDict = {}
    for k, v in sd.items():
        name = _map(k)
        if name is None:
            continue
        if name.endswith("qkv.weight") and v.ndim == 3:
            v = v.unsqueeze(-1)  # Conv1d (2C, C, 1) -> 1x1 Conv2d (2C, C, 1, 1)
        out[name] = v
    return out


CONVERTERS = (Converter("medt-official", "medt", detect=is_medt_official, convert=convert_medt_official),)

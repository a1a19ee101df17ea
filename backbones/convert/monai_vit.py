"""MONAI ``ViT`` (and the ``vit.*`` part of MONAI ``UNETR``) state dicts -> vtk ViT.

MONAI's ViT (``monai.networks.nets.ViT``, the encoder of UNETR, Hatamizadeh et al., arXiv:2103.10504) names
its parts ``patch_embedding.{position_embeddings, patch_embeddings}``, ``blocks.{i}.{norm1, attn.qkv,
attn.out_proj, norm2, mlp.linear1, mlp.linear2}`` and ``norm``. Its qkv rows are ordered ``(qkv, heads, dh)``
like timm's, so they load unchanged. The "perceptron" patch embedding is a ``Linear`` over patches rearranged
``b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)``; it becomes our conv ``proj`` by a reshape.

MONAI's defaults differ from timm's: no qkv bias, LayerNorm eps 1e-5, no position row for the class token. For
outputs identical to MONAI build the model with ``qkv_bias=False, norm_eps=1e-5`` (and ``class_token=True,
no_embed_class=True`` for a classification ViT). A missing qkv bias is loaded as zeros when the model has one.
MONAI's classification head may end in a Tanh (``post_activation="Tanh"``); only its Linear is loaded.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import torch
from torch import nn

from backbones.convert._base import Converter, StateDict

__all__ = ["CONVERTERS", "convert_monai_vit", "is_monai_vit"]

_RENAMES = (
    (re.compile(r"^patch_embedding\.position_embeddings$"), "pos_embed"),
    (re.compile(r"^patch_embedding\.cls_token$"), "cls_token"),
    (re.compile(r"^patch_embedding\.patch_embeddings\.(weight|bias)$"), r"patch_embed.proj.\1"),  # proj_type="conv"
    (re.compile(r"^blocks\.(\d+)\.attn\.out_proj\.(weight|bias)$"), r"blocks.\1.attn.proj.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.linear1\.(weight|bias)$"), r"blocks.\1.mlp.fc1.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.linear2\.(weight|bias)$"), r"blocks.\1.mlp.fc2.\2"),
    (re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv)\.(weight|bias)$"), r"blocks.\1.\2.\3"),
    (re.compile(r"^(norm|cls_token)(\.weight|\.bias)?$"), r"\1\2"),
    (re.compile(r"^classification_head(?:\.0)?\.(weight|bias)$"), r"head.\1"),
)
_UNUSED = re.compile(r"^blocks\.\d+\.(norm_cross_attn|cross_attn)\.")  # always-built cross-attention parts
_PERCEPTRON = "patch_embedding.patch_embeddings.1."


def is_monai_vit(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker keys: ``patch_embedding.position_embeddings`` or ``blocks.0.attn.out_proj.weight``."""
    return any(k.endswith("patch_embedding.position_embeddings") or k.endswith("blocks.0.attn.out_proj.weight")
               for k in sd)


def _perceptron_to_conv(w: torch.Tensor, patch_size: tuple) -> torch.Tensor:
    """Linear ``(C, p1*p2*p3*c_in)`` over ``(p1 p2 p3 c)`` patches -> conv ``(C, c_in, p1, p2, p3)``."""
    C, F = w.shape
    c_in = F // math.prod(patch_size)
    return w.reshape(C, *patch_size, c_in).movedim(-1, 1).contiguous()


def _rename(k: str) -> str:
    for pat, repl in _RENAMES:
        if pat.match(k):
            return pat.sub(repl, k)
    raise KeyError(f"unknown MONAI ViT key {k!r}")


def convert_monai_vit(sd: Mapping[str, torch.Tensor], model: nn.Module, prefix: str = "") -> StateDict:
    """Map MONAI ``ViT`` keys (under ``prefix``, e.g. ``"vit."`` for a UNETR state dict) onto ``model``.

    Args:
        sd: MONAI state dict; keys outside ``prefix`` are ignored.
        model: A vtk :class:`~backbones.models.vit.VisionTransformer` (its ``patch_embed.patch_size`` shapes
            the perceptron kernel; a qkv bias it has but MONAI lacks is filled with zeros).
        prefix: Key prefix of the ViT inside ``sd``.

    Returns:
        The ViT part in vtk key names, without ``prefix``.
    """
    own = model.state_dict()
    patch = tuple(model.patch_embed.patch_size)
    out: StateDict = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        k = k[len(prefix):]
        if _UNUSED.match(k):
            continue
        if k.startswith(_PERCEPTRON):
            leaf = k[len(_PERCEPTRON):]
            out[f"patch_embed.proj.{leaf}"] = _perceptron_to_conv(v, patch) if leaf == "weight" else v
            continue
        out[_rename(k)] = v
    for key in [k for k in own if k.endswith("attn.qkv.bias") and k not in out]:
        if key.replace(".bias", ".weight") in out:
            out[key] = torch.zeros_like(own[key])  # MONAI qkv_bias=False == a zero bias
    return out


def _convert(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    return convert_monai_vit(sd, model, prefix="vit." if any(k.startswith("vit.") for k in sd) else "")


CONVERTERS = (Converter("monai", "vit", detect=is_monai_vit, convert=_convert),)

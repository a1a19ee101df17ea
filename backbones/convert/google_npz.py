"""Google/JAX ``.npz`` checkpoints (``ViT-B_16.npz``, ``R50+ViT-B_16.npz``) -> vtk ViT / R50+ViT hybrid.

The files of google-research/vision_transformer (Dosovitskiy et al., arXiv:2010.11929), also used by TransUNet
(Chen et al., arXiv:2102.04306). Flax layouts are transposed to PyTorch: conv kernels HWIO -> OIHW, dense kernels
(in, out) -> (out, in), attention ``query/key/value`` kernels ``(C, H, Dh)`` fused into one ``qkv`` weight and
the ``out`` kernel ``(H, Dh, C)`` flattened. The representation layer ``pre_logits`` of in21k files is dropped
(timm and TransUNet drop it as well).
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from backbones.convert._base import Converter, StateDict

__all__ = ["CONVERTERS", "convert_google_npz", "is_google_npz", "GOOGLE_PREFIXES"]

GOOGLE_PREFIXES = ("opt/target/", "params/", "")
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/(.+)$")
_UNIT = re.compile(r"^block(\d+)/unit(\d+)/(conv|gn)(1|2|3|_proj)/(kernel|scale|bias)$")
_BACKBONE = "patch_embed.backbone."


def is_google_npz(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker keys: ``embedding/kernel`` and ``Transformer/encoder_norm/scale`` (under an optional prefix)."""
    return any(f"{p}embedding/kernel" in sd and f"{p}Transformer/encoder_norm/scale" in sd for p in GOOGLE_PREFIXES)


def _conv(w: torch.Tensor) -> torch.Tensor:
    return w.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW


def _dense(w: torch.Tensor) -> torch.Tensor:
    return w.t().contiguous()  # (in, out) -> (out, in)


def _vec(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(-1)


_TOP: Dict[str, Tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "embedding/kernel": ("patch_embed.proj.weight", _conv),
    "embedding/bias": ("patch_embed.proj.bias", _vec),
    "cls": ("cls_token", lambda w: w.reshape(1, 1, -1)),
    "Transformer/posembed_input/pos_embedding": ("pos_embed", lambda w: w.reshape(1, -1, w.shape[-1])),
    "Transformer/encoder_norm/scale": ("norm.weight", _vec),
    "Transformer/encoder_norm/bias": ("norm.bias", _vec),
    "head/kernel": ("head.weight", _dense),
    "head/bias": ("head.bias", _vec),
    "conv_root/kernel": (_BACKBONE + "stem.conv.weight", _conv),
    "gn_root/scale": (_BACKBONE + "stem.norm.weight", _vec),
    "gn_root/bias": (_BACKBONE + "stem.norm.bias", _vec),
}
_IN_BLOCK: Dict[str, Tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "LayerNorm_0/scale": ("norm1.weight", _vec),
    "LayerNorm_0/bias": ("norm1.bias", _vec),
    "LayerNorm_2/scale": ("norm2.weight", _vec),
    "LayerNorm_2/bias": ("norm2.bias", _vec),
    "MultiHeadDotProductAttention_1/out/kernel": ("attn.proj.weight", lambda w: w.reshape(-1, w.shape[-1]).t()),
    "MultiHeadDotProductAttention_1/out/bias": ("attn.proj.bias", _vec),
    "MlpBlock_3/Dense_0/kernel": ("mlp.fc1.weight", _dense),
    "MlpBlock_3/Dense_0/bias": ("mlp.fc1.bias", _vec),
    "MlpBlock_3/Dense_1/kernel": ("mlp.fc2.weight", _dense),
    "MlpBlock_3/Dense_1/bias": ("mlp.fc2.bias", _vec),
}
_QKV = "MultiHeadDotProductAttention_1/{}/{}"
_DROPPED = ("pre_logits/kernel", "pre_logits/bias")


def _unit_key(m: "re.Match[str]") -> str:
    stage, unit, kind, r, leaf = m.groups()
    layer = "conv" if kind == "conv" else "norm"
    mod = f"downsample.{layer}" if r == "_proj" else f"{layer}{r}"
    param = "weight" if leaf in ("kernel", "scale") else "bias"
    return f"{_BACKBONE}stages.{int(stage) - 1}.blocks.{int(unit) - 1}.{mod}.{param}"


def _fuse_qkv(w: Mapping[str, torch.Tensor], bp: str) -> StateDict:
    """``query/key/value`` kernels ``(C, H, Dh)`` and biases ``(H, Dh)`` -> ``qkv.weight (3C, C)``, ``qkv.bias``."""
    out = {f"{bp}attn.qkv.weight": torch.cat([w[f"{bp}" + _QKV.format(n, "kernel")].flatten(1).t()
                                              for n in ("query", "key", "value")], dim=0)}
    if all(f"{bp}" + _QKV.format(n, "bias") in w for n in ("query", "key", "value")):
        out[f"{bp}attn.qkv.bias"] = torch.cat([w[f"{bp}" + _QKV.format(n, "bias")].reshape(-1)
                                               for n in ("query", "key", "value")])
    return out


def _map_key(k: str, v: torch.Tensor) -> Optional[Tuple[str, torch.Tensor]]:
    if k in _TOP:
        name, fn = _TOP[k]
        return name, fn(v)
    m = _BLOCK.match(k)
    if m and m.group(2) in _IN_BLOCK:
        name, fn = _IN_BLOCK[m.group(2)]
        return f"blocks.{m.group(1)}.{name}", fn(v)
    m = _UNIT.match(k)
    if m:
        return _unit_key(m), (_conv(v) if m.group(5) == "kernel" else _vec(v))
    return None


def convert_google_npz(sd: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Map a Google ViT or R50+ViT ``.npz`` (as read by ``read_checkpoint``) onto vtk key names.

    Args:
        sd: Flax arrays keyed ``embedding/kernel``, ``Transformer/encoderblock_{i}/...``, ``cls``, ``head/...``
            (and ``conv_root``, ``gn_root``, ``block{s}/unit{u}/...`` for the hybrid), optionally prefixed
            ``opt/target/`` or ``params/``.
        model: Target model (unused apart from the contract; resampling happens in the builder).

    Raises:
        KeyError: An unknown key (e.g. a big_vision stacked-block file, which is not supported).
    """
    prefix = next(p for p in GOOGLE_PREFIXES if f"{p}embedding/kernel" in sd)
    w = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out: StateDict = {}
    blocks = sorted({int(m.group(1)) for m in map(_BLOCK.match, w) if m})
    for i in blocks:
        bp = f"Transformer/encoderblock_{i}/"
        out.update({k.replace(bp, f"blocks.{i}."): t for k, t in _fuse_qkv(w, bp).items()})
    for k, v in w.items():
        if k in _DROPPED or ("/query/" in k or "/key/" in k or "/value/" in k):
            continue
        mapped = _map_key(k, v)
        if mapped is None:
            raise KeyError(f"unknown Google checkpoint key {k!r}")
        out[mapped[0]] = mapped[1]
    return out


CONVERTERS = (Converter("google-npz", "vit", detect=is_google_npz, convert=convert_google_npz),)

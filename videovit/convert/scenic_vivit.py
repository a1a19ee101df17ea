"""Scenic (google-research/scenic, JAX/Flax) ViViT checkpoints -> vtk ``ViViT`` (model 1) and
``ViViTFactorisedEncoder`` (model 2), without JAX.

Arnab et al., "ViViT: A Video Vision Transformer", arXiv:2103.15691; names from ``scenic/projects/vivit/model.py``
(``ViViT``, ``SpaceTimeViViT``) and ``scenic/model_lib/layers/attention_layers.py`` (``MlpBlock``).

Files: a flattened ``.npz`` whose keys are the Flax parameter paths joined with ``/`` (what
``np.savez(path, **flax.traverse_util.flatten_dict(params, sep="/"))`` writes), read by the builder like any npz,
or a Flax msgpack checkpoint (``checkpoint_<step>``, ``*.msgpack``) read by :func:`read_flax_checkpoint` when the
``msgpack`` package is installed (pass the returned dict as ``pretrained=``). A whole train state works too: the
parameters are found under ``params/``, ``optimizer/target/`` or ``opt/target/`` (optimizer moments are ignored).

=======================================================================  =====================================
Scenic (model 1: ``Transformer``; model 2: ``SpatialTransformer`` and     vtk (model 2 temporal: ``temporal_``
``TemporalTransformer``)                                                  prefixes)
=======================================================================  =====================================
``embedding/kernel`` ``(t, h, w, C, D)``, ``embedding/bias``              ``patch_embed.proj`` ``(D, C, t, h, w)``
``cls`` / ``cls_SpatialTransformer`` / ``cls_TemporalTransformer``        ``cls_token`` / ``temporal_cls_token``
``<T>/posembed_input/pos_embedding``                                      ``pos_embed`` / ``temporal_pos_embed``
``<T>/encoderblock_i/LayerNorm_0``, ``LayerNorm_1``                       ``blocks.i.norm1``, ``norm2``
``<T>/encoderblock_i/MultiHeadDotProductAttention_0/{query,key,value}``   ``blocks.i.attn.qkv`` (fused, rows q;k;v)
``.../MultiHeadDotProductAttention_0/out``                                ``blocks.i.attn.proj``
``<T>/encoderblock_i/MlpBlock_0/Dense_0``, ``Dense_1``                    ``blocks.i.mlp.fc1``, ``fc2``
``<T>/encoder_norm``                                                      ``norm`` / ``temporal_norm``
``output_projection``                                                     ``head``
=======================================================================  =====================================

Flax kernels are transposed (Dense ``(in, out)`` -> ``(out, in)``; attention ``(D, H, Dh)`` / ``(H, Dh, D)``
flattened). A ``pre_logits`` layer with parameters (``representation_size``) has no vtk counterpart and is
rejected. Scenic's LayerNorm eps (1e-6) and tanh-approximate GELU (``nn.gelu``) are vtk ViViT's defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from backbones.convert import Converter, StateDict
from engine.errors import UserError

__all__ = ["CONVERTERS", "convert_scenic_vivit", "detect_scenic_vivit", "read_flax_checkpoint", "SCENIC_PREFIXES"]

SCENIC_PREFIXES = ("", "params/", "optimizer/target/", "opt/target/", "target/")
_ROOTS = ("embedding/", "Transformer/", "SpatialTransformer/", "TemporalTransformer/", "cls", "output_projection/",
          "pre_logits/")
# Scenic encoder -> (blocks, pos_embed, norm) names in vtk.
_ENCODERS = {"Transformer": ("blocks", "pos_embed", "norm"), "SpatialTransformer": ("blocks", "pos_embed", "norm"),
             "TemporalTransformer": ("temporal_blocks", "temporal_pos_embed", "temporal_norm")}
_TOKENS = {"cls": "cls_token", "cls_SpatialTransformer": "cls_token", "cls_TemporalTransformer": "temporal_cls_token"}
_BLOCK = re.compile(r"^encoderblock_(\d+)/(.+)/(kernel|bias|scale)$")
_LN = {"LayerNorm_0": "norm1", "LayerNorm_1": "norm2"}
_MLP = re.compile(r"^MlpBlock_\d+/Dense_([01])$")
_ATTN = re.compile(r"^MultiHeadDotProductAttention_\d+/(query|key|value|out)$")


def _prefix(sd: Mapping[str, Any]) -> Optional[str]:
    """The path prefix of the parameter tree: a known one, else the shortest before a 5D ``embedding/kernel``."""
    cands = [k[:-len("embedding/kernel")] for k, v in sd.items()
             if k.endswith("embedding/kernel") and getattr(v, "ndim", 0) == 5]
    for p in SCENIC_PREFIXES:
        if p in cands:
            return p
    return min(cands, key=len) if cands else None


def detect_scenic_vivit(sd: Mapping[str, torch.Tensor]) -> bool:
    """Marker: a 5D ``[<prefix>]embedding/kernel`` (Flax ``(t, h, w, C, D)``) next to a ``Transformer`` or
    ``SpatialTransformer`` encoder norm."""
    p = _prefix(sd)
    return p is not None and any(f"{p}{r}/encoder_norm/scale" in sd for r in ("Transformer", "SpatialTransformer"))


def _encoder(name: str, tree: Mapping[str, torch.Tensor], out: StateDict) -> None:
    """One Scenic ``Encoder`` (keys relative to it) -> vtk ``blocks``/``pos_embed``/``norm`` names."""
    blocks, pos, norm = _ENCODERS[name]
    qkv: Dict[str, List[Optional[torch.Tensor]]] = {}
    for k, v in tree.items():
        if k == "posembed_input/pos_embedding":
            out[pos] = v.reshape(1, -1, v.shape[-1])
        elif k.startswith("encoder_norm/"):
            out[f"{norm}.{'weight' if k.endswith('scale') else 'bias'}"] = v.reshape(-1)
        else:
            _block_tensor(k, v, blocks, out, qkv)
    for key, parts in qkv.items():
        if any(p is None for p in parts):
            raise KeyError(f"{key}: query/key/value incomplete in the Scenic checkpoint")
        out[key] = torch.cat(parts, dim=0)  # (3D, ...) rows [q; k; v]


def _block_tensor(k: str, v: torch.Tensor, blocks: str, out: StateDict,
                  qkv: Dict[str, List[Optional[torch.Tensor]]]) -> None:
    m = _BLOCK.match(k)
    if m is None:
        raise KeyError(f"unknown Scenic ViViT key {k!r}")
    i, mod, leaf = m.groups()
    b = f"{blocks}.{i}."
    param = "weight" if leaf in ("kernel", "scale") else "bias"
    if mod in _LN:
        out[f"{b}{_LN[mod]}.{param}"] = v.reshape(-1)
    elif _MLP.match(mod):
        out[f"{b}mlp.fc{int(_MLP.match(mod).group(1)) + 1}.{param}"] = v.t() if leaf == "kernel" else v
    elif _ATTN.match(mod):
        proj = _ATTN.match(mod).group(1)
        if proj == "out":  # kernel (H, Dh, D)
            out[f"{b}attn.proj.{param}"] = v.reshape(-1, v.shape[-1]).t() if leaf == "kernel" else v
        else:  # kernel (D, H, Dh), bias (H, Dh)
            t = v.reshape(v.shape[0], -1).t() if leaf == "kernel" else v.reshape(-1)
            qkv.setdefault(f"{b}attn.qkv.{param}", [None] * 3)[("query", "key", "value").index(proj)] = t
    else:
        raise KeyError(f"unknown Scenic ViViT key {k!r} (models 3/4 and other block types are not supported)")


def _check_model(trees: Mapping[str, Any], model: Optional[nn.Module]) -> None:
    if model is None:
        return
    factorised = "SpatialTransformer" in trees
    if factorised != hasattr(model, "temporal_blocks"):
        kind = "model 2 (factorised encoder)" if factorised else "model 1 (spatio-temporal)"
        raise ValueError(f"a Scenic ViViT {kind} checkpoint does not fit a {type(model).__name__}; use "
                         f"{'vivit_base_fe_16x2_224' if factorised else 'vivit_base_16x2_224'} (or its large twin)")


def convert_scenic_vivit(sd: Mapping[str, torch.Tensor], model: Optional[nn.Module]) -> StateDict:
    """Map a flattened Scenic ViViT parameter tree (model 1 or 2) onto vtk names (pure).

    Raises:
        KeyError: An unknown key (another ViViT model, a ``pre_logits`` layer with parameters).
        ValueError: A model-2 checkpoint for a model-1 network or the reverse.
    """
    p = _prefix(sd)
    w = {k[len(p):]: torch.as_tensor(v) for k, v in sd.items() if k.startswith(p) and k[len(p):].startswith(_ROOTS)}
    trees: Dict[str, Dict[str, torch.Tensor]] = {}
    out: StateDict = {}
    for k, v in w.items():
        root, _, rest = k.partition("/")
        if root in _ENCODERS:
            trees.setdefault(root, {})[rest] = v
        elif root in _TOKENS:
            out[_TOKENS[root]] = v.reshape(1, 1, -1)
        elif k == "embedding/kernel":
            out["patch_embed.proj.weight"] = v.permute(4, 3, 0, 1, 2).contiguous()  # (t,h,w,C,D) -> (D,C,t,h,w)
        elif k == "embedding/bias":
            out["patch_embed.proj.bias"] = v
        elif k.startswith("output_projection/"):
            out["head.weight" if k.endswith("kernel") else "head.bias"] = v.t() if k.endswith("kernel") else v
        else:
            raise KeyError(f"unsupported Scenic ViViT key {k!r} (a representation layer has no vtk counterpart)")
    _check_model(trees, model)
    for name, tree in trees.items():
        _encoder(name, tree, out)
    return out


# --------------------------------------------------------------------------------------- Flax msgpack files
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3  # flax.serialization._MsgpackExtType


def _ndarray(data: bytes) -> Any:
    """Flax's ndarray encoding: msgpack of ``(shape, dtype name, C-order bytes)``."""
    import msgpack
    shape, dtype, buf = msgpack.unpackb(data, raw=True)
    name = dtype.decode() if isinstance(dtype, bytes) else dtype
    if name == "bfloat16":  # no numpy dtype: keep the bits and view them as torch.bfloat16
        return torch.from_numpy(np.frombuffer(buf, dtype=np.int16).copy()).view(torch.bfloat16).reshape(shape)
    return np.frombuffer(buf, dtype=np.dtype(name)).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    import msgpack
    if code == _EXT_NDARRAY:
        return _ndarray(data)
    if code == _EXT_NPSCALAR:
        return _ndarray(data)[()]
    if code == _EXT_COMPLEX:
        re_, im = msgpack.unpackb(data)
        return complex(re_, im)
    return msgpack.ExtType(code, data)


def _unchunk(d: Mapping[str, Any]) -> Any:
    """Flax splits arrays above its chunk size into ``{'__msgpack_chunked_array__', 'shape', 'chunks'}``."""
    shape = tuple(d["shape"][str(i)] for i in range(len(d["shape"])))
    chunks = [d["chunks"][str(i)] for i in range(len(d["chunks"]))]
    return np.concatenate([np.asarray(c).reshape(-1) for c in chunks]).reshape(shape)


def _flatten(tree: Any, prefix: str, out: StateDict) -> None:
    if isinstance(tree, Mapping):
        if "__msgpack_chunked_array__" in tree:
            _flatten(_unchunk(tree), prefix, out)
            return
        for k, v in tree.items():
            _flatten(v, f"{prefix}{k}/", out)
    elif isinstance(tree, torch.Tensor):
        out[prefix[:-1]] = tree
    elif isinstance(tree, np.ndarray) and tree.dtype.kind in "fiub":
        out[prefix[:-1]] = torch.from_numpy(tree.copy())


def read_flax_checkpoint(path: Union[str, Path]) -> StateDict:
    """Read a Flax msgpack checkpoint (``flax.serialization.to_bytes`` / ``checkpoints.save_checkpoint``) into a
    flat ``{'a/b/c': tensor}`` dict, without JAX or Flax; non-array leaves (step counters, ...) are skipped.

    Raises:
        UserError: ``msgpack`` is not installed, or the file is missing or not a Flax msgpack file.
    """
    try:
        import msgpack
    except ImportError as e:
        raise UserError(f"{path}: reading Flax msgpack checkpoints needs the msgpack package (pip install msgpack); "
                        "or save the parameters as a flattened .npz") from e
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_ext_hook, raw=False)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as e:
        raise UserError(f"{path}: not a Flax msgpack checkpoint ({type(e).__name__}: {e})") from e
    out: StateDict = {}
    _flatten(tree, "", out)
    if not out:
        raise UserError(f"{path}: Flax checkpoint holds no arrays")
    return out


CONVERTERS = (Converter("scenic", "vivit", detect=detect_scenic_vivit, convert=convert_scenic_vivit),)

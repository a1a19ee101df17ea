"""Checkpoint reading and pretrained-weight loading shared by every vtk model.

The pipeline follows timm's ``build_model_with_cfg`` / ``load_pretrained`` (Wightman, pytorch-image-models),
with the per-source ``if/elif`` chain replaced by the model's tuple of converters (:mod:`backbones.convert`):

1. :func:`read_checkpoint` turns a path (``.pth/.pt/.bin/.ckpt`` via ``torch.load(weights_only=True)``,
   ``.safetensors``, ``.npz``) or a mapping into a flat ``dict[str, Tensor]``.
2. The first of the model's converters whose marker keys match maps it onto our key names.
3. Generic adaptation: ``in_chans`` (3 -> 1 sums the RGB filters of ``pretrained_cfg['first_conv']``, other
   counts repeat and rescale them), the model hook ``model.adapt_state_dict(sd)`` (position-embedding grids,
   2D -> 3D inflation), and the classifier (``pretrained_cfg['classifier']``) is dropped when its shape differs.
4. Every shape is checked and the weights load with ``strict=True``; only keys matching the model's
   ``pretrained_ignore_keys`` patterns (and a dropped classifier) keep their initial values.

Example::

    >>> model = VisionTransformer(img_size=96, in_chans=1, num_classes=14)
    >>> report = load_pretrained(model, "ViT-B_16.npz", VIT_CONVERTERS)
    >>> print(report)
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint
from torch import nn

from backbones.convert import Converter, StateDict, converter_label, find_converter
from engine.errors import UserError

__all__ = [
    "LoadReport", "read_checkpoint", "load_pretrained", "build_model", "adapt_input_conv", "take_indices",
    "checkpoint_module", "collect_load_reports", "load_state_strict", "pickled_code_message",
]

_logger = logging.getLogger("backbones")

_CONTAINER_KEYS = ("state_dict", "model", "model_state", "module", "state_dict_ema", "model_ema")
_TORCH_SUFFIXES = (".pth", ".pt", ".pyth", ".bin", ".ckpt", ".tar")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        source: Checkpoint path, or ``"<state dict>"``.
        converter: Name of the converter used (``"native"`` when the keys were already ours).
        adapted: One line per adaptation (input channels, resampled tables, ...).
        dropped: Checkpoint keys not loaded (mismatched classifier, keys the converter discarded).
        kept_init: Model keys left at their initial values (``pretrained_ignore_keys``, dropped classifier).
        loaded: Number of tensors loaded.
        loaded_keys: Model keys whose values come from the checkpoint (after conversion and adaptation).
        created: Model keys the model's ``adapt_state_dict`` hook made that the checkpoint does not hold (e.g.
            TimeSformer's temporal attention copied from the spatial one, a zero ``time_embed``).
        classifier_shapes: Shapes of the checkpoint's classifier tensors that were dropped for not fitting
            (``{"head.weight": (101, 768)}``: the file's head has 101 classes).
    """

    source: str
    converter: str
    adapted: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)
    loaded: int = 0
    loaded_keys: List[str] = field(default_factory=list)
    created: List[str] = field(default_factory=list)
    classifier_shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)

    @property
    def new(self) -> List[str]:
        """Model keys that did not come from the checkpoint as they are: made by the hook or left at init."""
        return list(dict.fromkeys(self.created + self.kept_init))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready summary: ``loaded`` / ``adapted`` / ``new`` / ``ignored`` tensors (``pretrained_report.json``)."""
        converted = [a for a in self.adapted if " converter mapped " in a]
        adapted = [a for a in self.adapted if a not in converted]
        return {"source": self.source, "format": self.converter, "converted": converted,
                "loaded": list(self.loaded_keys), "adapted": adapted, "new": self.new, "ignored": list(self.dropped),
                "counts": {"loaded": len(self.loaded_keys), "adapted": len(adapted), "new": len(self.new),
                           "ignored": len(self.dropped)}}

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.source} ({self.converter} format)"]
        lines += [f"  adapted: {a}" for a in self.adapted]
        if self.dropped:
            lines.append(f"  dropped from checkpoint: {', '.join(self.dropped)}")
        if self.created:
            lines.append(f"  new (made from the checkpoint by the model): {', '.join(self.created)}")
        if self.kept_init:
            lines.append(f"  left at init: {', '.join(self.kept_init)}")
        return "\n".join(lines)


_REPORT_SINKS: List[List["LoadReport"]] = []


@contextlib.contextmanager
def collect_load_reports() -> Iterator[List[LoadReport]]:
    """Collect every :class:`LoadReport` that :func:`load_pretrained` makes inside the ``with`` block.

    Entry points return the model, not the report; a caller that needs it (``--pretrained`` writing
    ``pretrained_report.json``) wraps ``create_model(..., pretrained=FILE)`` in this block.

    Example::

        >>> with collect_load_reports() as reports:
        ...     model = videovit.create_model("timesformer", pretrained="vit_base.pth")
        >>> reports[-1].new
    """
    sink: List[LoadReport] = []
    _REPORT_SINKS.append(sink)
    try:
        yield sink
    finally:
        _REPORT_SINKS.remove(sink)


# ----------------------------------------------------------------------------------------------------- reading
def _flatten(obj: Mapping[str, Any], prefix: str = "") -> StateDict:
    """Nested mappings -> flat ``{'a.b': tensor}``; numpy arrays become tensors, other values are dropped."""
    out: StateDict = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif type(v).__module__ == "numpy" and hasattr(v, "shape"):
            out[key] = torch.from_numpy(v.copy())
    return out


def _unwrap(obj: Any) -> Any:
    """Descend into ``state_dict``/``model``/``model_state``/``module`` containers of training checkpoints."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        obj = inner
    return obj


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")  # torch's weights_only refusal names the class/function it met


def pickled_code_message(path: Union[str, os.PathLike], error: BaseException) -> str:
    """The one-line refusal of a checkpoint that ``torch.load(weights_only=True)`` rejected: it holds pickled code
    (a class or function reference), which vtk never runs."""
    found = _GLOBAL_RE.search(str(error))
    what = f" ({found.group(1)})" if found else ""
    return (f"{path}: the file contains pickled code{what}, and vtk only loads weights (tensors); it was not run. "
            "Re-save it where you trust it as a plain state dict or .safetensors")


def _load_file(path: Path) -> Any:
    name = path.name.lower()
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(str(path))
    if name.endswith(".npz"):
        import numpy as np
        with np.load(str(path), allow_pickle=False) as f:
            return {k: torch.from_numpy(f[k].copy()) for k in f.files}
    if name.endswith(_TORCH_SUFFIXES):
        return torch.load(str(path), map_location="cpu", weights_only=True)
    raise UserError(f"{path}: unknown checkpoint format (expected .pth, .pt, .bin, .ckpt, .safetensors or .npz)")


def read_checkpoint(src: Union[str, os.PathLike, Mapping[str, Any]]) -> StateDict:
    """Read a checkpoint into a flat ``dict[str, Tensor]``.

    Args:
        src: A path (``.pth/.pt/.bin/.ckpt`` loaded with ``torch.load(weights_only=True)``, ``.safetensors``,
            ``.npz``) or an in-memory mapping. Training containers (``state_dict``, ``model``,
            ``model_state``, ``module``) are unwrapped; non-tensor entries are dropped.

    Raises:
        UserError: The file is missing, unreadable, not a weights-only pickle, or holds no tensors.
    """
    if isinstance(src, Mapping):
        name, obj = "<state dict>", src
    else:
        path = Path(src).expanduser()
        name = str(path)
        if not path.is_file():
            raise UserError(f"{path}: no such checkpoint file")
        try:
            obj = _load_file(path)
        except UserError:
            raise
        except pickle.UnpicklingError as e:
            if _GLOBAL_RE.search(str(e)) is None:  # a corrupt file, not a refused class or function
                raise UserError(f"{path}: cannot read checkpoint (UnpicklingError: {' '.join(str(e).split())[:160]})")
            raise UserError(pickled_code_message(path, e)) from None
        except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
            raise UserError(f"{path}: cannot read checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
    sd = _flatten(_unwrap(obj)) if isinstance(obj, Mapping) else {}
    if not sd:
        raise UserError(f"{name}: checkpoint holds no tensors")
    return sd


# ---------------------------------------------------------------------------------------------------- adapting
def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """Adapt a first-conv weight ``(O, I, *k)`` to ``in_chans`` inputs, as timm's ``adapt_input_conv``.

    One channel sums the pretrained filters over their inputs (the response to a grey image is unchanged); other
    counts cycle through the pretrained input filters and rescale them by ``I / in_chans``.
    """
    I = weight.shape[1]
    if in_chans == I:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = int(math.ceil(in_chans / I))
        w = w.repeat(1, reps, *([1] * (w.ndim - 2)))[:, :in_chans] * (I / float(in_chans))
    return w.to(dtype)


def _as_tuple(v: Union[None, str, Sequence[str]]) -> Tuple[str, ...]:
    return () if not v else ((v,) if isinstance(v, str) else tuple(v))


def _adapt_first_conv(sd: StateDict, model_sd: StateDict, cfg: Mapping[str, Any], report: LoadReport) -> None:
    for conv in _as_tuple(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in sd and key in model_sd and sd[key].shape[1] != model_sd[key].shape[1]:
            old = sd[key].shape[1]
            sd[key] = adapt_input_conv(model_sd[key].shape[1], sd[key])
            how = "summed" if model_sd[key].shape[1] == 1 else "repeated and rescaled"
            report.adapted.append(f"{key}: in_chans {old} -> {model_sd[key].shape[1]} ({how})")


def _drop_classifier(sd: StateDict, model_sd: StateDict, cfg: Mapping[str, Any], report: LoadReport) -> List[str]:
    """Drop classifier tensors whose shape differs from (or that are absent in) the model; returns model keys
    that stay at init."""
    keep_init: List[str] = []
    for head in _as_tuple(cfg.get("classifier")):
        for key in [k for k in list(sd) if k == head or k.startswith(head + ".")]:
            if key not in model_sd or sd[key].shape != model_sd[key].shape:
                shape = tuple(sd.pop(key).shape)
                report.dropped.append(f"{key} {shape}")
                report.classifier_shapes[key] = shape
                if key in model_sd:
                    keep_init.append(key)
        keep_init += [k for k in model_sd if (k == head or k.startswith(head + ".")) and k not in sd
                      and k not in keep_init]
    return keep_init


def _run_hook(model: nn.Module, sd: StateDict, report: LoadReport) -> StateDict:
    hook: Optional[Callable[[StateDict], StateDict]] = getattr(model, "adapt_state_dict", None)
    if hook is None:
        return sd
    before = {k: tuple(v.shape) for k, v in sd.items()}
    try:
        sd = hook(dict(sd))
    except (ValueError, RuntimeError) as e:
        raise UserError(f"{report.source}: cannot adapt the weights to this model ({e})") from e
    for k, v in sd.items():
        if k in before and before[k] != tuple(v.shape):
            report.adapted.append(f"{k}: {before[k]} -> {tuple(v.shape)}")
    report.dropped += [f"{k} {before[k]}" for k in before if k not in sd]
    report.created += [k for k in sd if k not in before]
    return sd


# ----------------------------------------------------------------------------------------------------- loading
def _select_converter(sd: StateDict, model: nn.Module, model_sd: StateDict, converters: Sequence[Converter],
                      name: str) -> Optional[Converter]:
    conv = find_converter(sd, converters)
    if conv is not None:
        return conv
    if len(set(sd) & set(model_sd)) >= max(1, len(model_sd) // 2):
        return None  # our own key names
    known = ", ".join(dict.fromkeys(c.name for c in converters)) or "none"
    sample = ", ".join(list(sd)[:3])
    raise UserError(f"{name}: unrecognised checkpoint for a {converter_label(converters, type(model).__name__)} "
                    f"model (known formats: {known}; first keys: {sample})")


def _check_keys(sd: StateDict, model_sd: StateDict, ignore: Sequence[str], keep_init: List[str],
                name: str) -> List[str]:
    """Raise on shape mismatches, unexpected and missing keys; return the model keys left at init."""
    for k, v in sd.items():
        if k in model_sd and tuple(v.shape) != tuple(model_sd[k].shape):
            raise UserError(f"{name}: {k} has shape {tuple(v.shape)} in the checkpoint but "
                            f"{tuple(model_sd[k].shape)} in the model")
    unexpected = [k for k in sd if k not in model_sd]
    if unexpected:
        raise UserError(f"{name}: {len(unexpected)} checkpoint keys do not exist in the model "
                        f"(e.g. {', '.join(unexpected[:3])})")
    missing = [k for k in model_sd if k not in sd]
    allowed = [k for k in missing if k in keep_init or any(fnmatch.fnmatch(k, p) for p in ignore)]
    bad = [k for k in missing if k not in allowed]
    if bad:
        raise UserError(f"{name}: {len(bad)} model weights are missing from the checkpoint "
                        f"(e.g. {', '.join(bad[:3])})")
    return allowed


def load_state_strict(model: nn.Module, sd: StateDict, name: str) -> nn.Module:
    """``model.load_state_dict(sd)`` for a vtk checkpoint of this very model: a tensor of the wrong shape, an
    unexpected or a missing key is a one-line ``UserError`` starting with ``name`` (the file or option) that
    names the tensor and both shapes."""
    _check_keys(sd, model.state_dict(), (), [], name)
    model.load_state_dict(sd)
    return model


def _strip_module_prefix(sd: StateDict) -> StateDict:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_pretrained(model: nn.Module, src: Union[str, os.PathLike, Mapping[str, Any]],
                    converters: Sequence[Converter]) -> LoadReport:
    """Load foreign or native weights into ``model`` in place.

    Args:
        model: A vtk model with ``pretrained_cfg`` (``first_conv``, ``classifier``), optionally
            ``adapt_state_dict(sd) -> sd`` and ``pretrained_ignore_keys`` (fnmatch patterns of model keys that
            may be absent from checkpoints).
        src: Checkpoint path or state dict (see :func:`read_checkpoint`).
        converters: The model's converters (e.g. ``backbones.convert.VIT_CONVERTERS``), tried in order; the
            first whose ``detect`` accepts the checkpoint converts it. ``()`` accepts only the model's own keys.

    Returns:
        A :class:`LoadReport`, also logged at INFO level on the ``backbones`` logger.

    Raises:
        UserError: Unreadable file, unknown format, or weights that do not fit the model.
    """
    name = "<state dict>" if isinstance(src, Mapping) else str(src)
    sd = _strip_module_prefix(read_checkpoint(src))
    model_sd = model.state_dict()
    conv = _select_converter(sd, model, model_sd, converters, name)
    report = LoadReport(source=name, converter="native" if conv is None else conv.name)
    if conv is not None:
        n_in = len(sd)
        try:
            sd = conv.convert(sd, model)
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"{name}: cannot convert {conv.name} checkpoint ({type(e).__name__}: {e})") from e
        if len(sd) != n_in:
            report.adapted.append(f"{conv.name} converter mapped {n_in} source tensors onto {len(sd)}")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    sd = dict(sd)
    _adapt_first_conv(sd, model_sd, cfg, report)
    sd = _run_hook(model, sd, report)
    keep_init = _drop_classifier(sd, model_sd, cfg, report)
    ignore = tuple(getattr(model, "pretrained_ignore_keys", ()) or ())
    report.kept_init = _check_keys(sd, model_sd, ignore, keep_init, name)
    full = {k: sd.get(k, model_sd[k]) for k in model_sd}
    model.load_state_dict(full, strict=True)
    report.loaded = len(sd)
    report.loaded_keys = [k for k in model_sd if k in sd and k not in report.created]
    _logger.info("%s", report)
    for sink in _REPORT_SINKS:
        sink.append(report)
    return report


def build_model(model_cls: Callable[..., nn.Module], pretrained: Optional[Any], converters: Sequence[Converter],
                **kwargs: Any) -> nn.Module:
    """Build ``model_cls(**kwargs)`` and load ``pretrained`` into it when given (entry-point helper).

    Args:
        model_cls: Model class or factory.
        pretrained: ``None``/``False`` for random init, else a checkpoint path or state dict. ``True`` is
            rejected: vtk never downloads weights.
        converters: The model's converters for :func:`load_pretrained`.
        **kwargs: Constructor arguments.
    """
    if pretrained is True:
        raise UserError("pretrained=True: vtk does not download weights; pass a checkpoint path or state dict")
    model = model_cls(**kwargs)
    if pretrained is not None and pretrained is not False:
        load_pretrained(model, pretrained, converters)
    return model


# ---------------------------------------------------------------------------------------- model-file helpers
def take_indices(num_blocks: int, indices: Union[None, int, Sequence[int]]) -> Tuple[List[int], int]:
    """Absolute block indices for ``forward_intermediates`` (timm's ``feature_take_indices``).

    Args:
        num_blocks: Number of blocks/stages.
        indices: ``None`` = all, an int ``n`` = the last ``n``, a sequence = those indices (negative from the end).

    Returns:
        ``(sorted unique indices, max index)``.
    """
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"last-n indices {indices} out of range 1..{num_blocks}")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = []
        for i in indices:
            j = num_blocks + i if i < 0 else i
            if not 0 <= j < num_blocks:
                raise ValueError(f"block index {i} out of range for {num_blocks} blocks")
            take.append(j)
    take = sorted(set(take))
    return take, max(take)


def checkpoint_module(module: nn.Module, *args: Any, enabled: bool = True) -> Any:
    """Run ``module(*args)`` under non-reentrant activation checkpointing when ``enabled`` and grads are on."""
    if enabled and torch.is_grad_enabled() and not torch.jit.is_scripting():
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
    return module(*args)

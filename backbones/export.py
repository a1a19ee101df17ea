"""Export any registry model to ONNX or TorchScript with its test protocol in the file, and load such files back.

An export is a traced graph of the model's ``forward`` with a dynamic batch dimension (and dynamic spatial size
where the model runs at another size and the traced graph still matches it there), plus one JSON document of
metadata: the registry entry (``input_size``, ``spatial_dims``, ``num_frames``, ``mean``/``std``), the test
``protocol`` (segmentation: ``roi``, ``spacing``, ``a_min``/``a_max``; video: ``stride``, ``crop_size``,
``short_side``, ``views``), ``class_names`` and how the file was made. ONNX files keep it in ``metadata_props``
under the key ``"vtk"``; TorchScript archives in the extra file ``vtk.json``.

ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17): it exports every
registered family, including the ones with Python-side shape logic (Swin's window padding, gated axial
attention, MViT's pooling) that ``torch.export`` rejects, and writes scaled-dot-product attention as standard
ONNX ``MatMul``/``Softmax`` nodes. Every export is checked against PyTorch on a batch of 2 (the trace used a
batch of 1) before the file is written; the file is written atomically (:func:`engine.io.atomic_write_bytes`).

Example::

    >>> import backbones
    >>> from backbones.export import export_model, load_exported, protocol_metadata
    >>> model = backbones.create_model("vit_tiny_patch16_224").eval()
    >>> meta = protocol_metadata(backbones.registry, "vit_tiny_patch16_224", model)
    >>> report = export_model(model, "vit.onnx", "onnx", meta)
    >>> runner, meta = load_exported("vit.onnx")
    >>> logits = runner(torch.randn(4, 3, 224, 224))  # (4, 1000)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata as _dist
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from engine.choices import check_choice
from engine.errors import RunError, UserError
from engine.io import atomic_write_bytes, silenced_fd

from .runtime import (DEPLOY_INSTALL, EXTRA_FILE, FORMAT_VERSION, INPUT_NAME, METADATA_KEY, OUTPUT_NAME,
                      REQUIRED_KEYS, ExportedModel, load_exported, onnx_runner, onnx_session, require, spatial_axes)

__all__ = ["FORMATS", "OPSET", "FORMAT_VERSION", "METADATA_KEY", "EXTRA_FILE", "REQUIRED_KEYS", "INPUT_NAME",
           "OUTPUT_NAME", "DEPLOY_INSTALL", "ExportReport", "ExportedModel", "protocol_metadata", "prepare_export",
           "export_model", "load_exported", "format_from_suffix", "example_input", "spatial_probes"]

FORMATS = ("onnx", "torchscript")
OPSET = 17  # LayerNormalization is a native op from 17 on
_TASKS = {"medvit": "seg", "videovit": "video", "backbones": "backbone"}
_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
             ".jit": "torchscript"}
# Frame chunking of videovit's FrameViT (STAM, VTN) bounds activation memory in PyTorch only; the tracer would
# freeze the number of chunks (and with it the batch size), so the exported graph encodes all B*T frames at once.
_CHUNK_ATTRS = {"frame_chunk_size": None, "eval_chunk_size": sys.maxsize}


# ------------------------------------------------------------------------------------------------ metadata
def _json_safe(value: Any) -> Any:
    """Tuples -> lists, recursively (what JSON round-trips to)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _version(dist: str) -> str:
    try:
        return _dist.version(dist)
    except _dist.PackageNotFoundError:
        return "unknown"


def _scaled_protocol(meta: Dict[str, Any], size: Sequence[int], task: str) -> Dict[str, Any]:
    """The registry protocol with its sizes following the built model's input size (e.g. a tiny config), and the
    segmentation window and spacing the pipeline defaults to where the entry names none (``medvit.recipes``)."""
    protocol = dict(meta.get("protocol") or {})
    if task == "seg":
        from medvit.recipes import default_spacing, default_window

        protocol["roi"] = list(size[1:])
        protocol["a_min"], protocol["a_max"] = default_window(meta, len(size) - 1)
        if len(size) == 4:
            protocol["spacing"] = default_spacing(meta)
    elif task == "video" and "crop_size" in protocol:
        crop = int(size[-1])
        if protocol.get("short_side") and protocol["crop_size"] != crop:
            protocol["short_side"] = round(protocol["short_side"] * crop / protocol["crop_size"])
        protocol["crop_size"] = crop
    return protocol


def _run_protocol(cfg: Any, task: str, protocol: Dict[str, Any], top: Dict[str, Any]) -> None:
    """Overwrite ``protocol`` / top-level keys with what the run evaluates with (``cfg.data_args``, with the
    defaults of the pipelines' ``Predictor`` where a run did not record a value)."""
    da = dict(cfg.data_args or {})
    if task == "seg":
        from medvit.data.transforms import RECIPE_3D  # medvit.inference.Predictor's defaults

        protocol.update({k: _json_safe(da.get(k, RECIPE_3D[k])) for k in ("spacing", "a_min", "a_max")})
        protocol.update({k: _json_safe(da[k]) for k in ("roi",) if k in da})
        protocol.update(dataset=cfg.data or protocol.get("dataset"))
        top["class_names"] = list(da["names"]) if da.get("names") else top["class_names"]
    elif task == "video":
        from videovit.data.transforms import KINETICS_MEAN, KINETICS_STD  # the video task's defaults

        protocol.update({k: da[k] for k in ("stride", "crop_size") if k in da})
        # The test-time short side (``data_args.short_side`` is the training one); none: resize to the crop.
        protocol["short_side"] = int(da.get("eval_short_side") or protocol["crop_size"])
        protocol["views"] = da.get("val_views", protocol.get("views"))
        top.update(mean=list(da.get("mean", KINETICS_MEAN)), std=list(da.get("std", KINETICS_STD)))
        top["num_frames"] = int(da.get("num_frames", top.get("num_frames") or 0)) or top.get("num_frames")
        top["class_names"] = list(da["classes"]) if da.get("classes") else top["class_names"]


def _default_class_names(task: str, protocol: Dict[str, Any], num_classes: Optional[int]) -> Optional[List[str]]:
    """A segmentation entry's dataset label names when they match the model's classes, else ``background``,
    ``class 1``, ... (what ``vtk seg predict --model NAME --pretrained FILE`` names them)."""
    if task != "seg" or not num_classes:
        return None
    from medvit.data.layouts import label_names

    names = list(label_names(protocol.get("dataset") or "", num_classes))
    return names if len(names) == num_classes else list(label_names("", num_classes))


def protocol_metadata(registry: Any, name: str, model: nn.Module, *, model_args: Optional[Dict[str, Any]] = None,
                      cfg: Any = None, source: Optional[str] = None) -> Dict[str, Any]:
    """The metadata written into an export: registry entry, test protocol, class names, provenance.

    Args:
        registry: The :class:`~backbones._registry.Registry` holding ``name``.
        name: Registered name or alias.
        model: The built model; its ``pretrained_cfg['input_size']`` is the export's input size.
        model_args: The overrides ``model`` was built with (a run's ``cfg.model_args`` when ``cfg`` is given).
        cfg: A run's :class:`~engine.config.TrainConfig` (from :func:`engine.load_run`): its ``data_args``
            (``roi``, ``spacing``, ``a_min``/``a_max``, ``names``; ``num_frames``, ``stride``, ``crop_size``,
            ``mean``/``std``, ``classes``) replace the registry's protocol.
        source: Where the weights came from (a checkpoint path, a pretrained file), recorded as is.
    """
    meta = registry.metadata(name)
    task = (cfg.task if cfg is not None and cfg.task else None) or _TASKS.get(meta["package"], "backbone")
    size = list((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or meta["input_size"])
    num_classes = getattr(model, "num_classes", None)
    top: Dict[str, Any] = {
        "input_size": size, "spatial_dims": meta.get("spatial_dims"),
        "num_frames": int(size[1]) if task == "video" else meta.get("num_frames"),
        "mean": _json_safe(meta.get("mean")), "std": _json_safe(meta.get("std")),
        "num_classes": num_classes, "class_names": None}
    protocol = _scaled_protocol(meta, size, task)
    if "num_classes" in protocol and num_classes:
        protocol["num_classes"] = num_classes
    if cfg is not None:
        _run_protocol(cfg, task, protocol, top)
    if top["class_names"] is None:
        top["class_names"] = _default_class_names(task, protocol, num_classes)
    args = cfg.model_args if cfg is not None else model_args
    return _json_safe({"format_version": FORMAT_VERSION, "model": meta["name"], "package": meta["package"],
                       "task": task, "model_args": dict(args or {}), "source": source or "registry", **top,
                       "protocol": protocol, "vtk_version": _version("vtk"), "torch_version": torch.__version__})


def prepare_export(registry: Any, name: str, *, pretrained: Optional[str] = None,
                   model_args: Optional[Dict[str, Any]] = None, cfg: Any = None,
                   state_dict: Optional[Dict[str, Tensor]] = None,
                   source: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build ``name`` (registry overrides, a pretrained file, or a run's config and weights) and its metadata.

    Returns:
        ``(model in eval mode, metadata)`` ready for :func:`export_model`.
    """
    from engine.pretrained import model_overrides

    args = dict(cfg.model_args if cfg is not None else (model_args or {}))
    try:  # a run's provenance keys (its --pretrained file) are not re-read: the weights are the run's
        model = registry.create_model(name, pretrained=pretrained, **model_overrides(args))
    except (TypeError, ValueError) as e:  # a bad override name or value
        raise UserError(f"--model {name}: {e}") from e
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"{source or 'checkpoint'}: weights do not fit {name} ({first})") from None
    meta = protocol_metadata(registry, name, model, model_args=args, cfg=cfg, source=source or pretrained)
    return model.eval(), meta


# ------------------------------------------------------------------------------------------ trace helpers
def _ints(shape: Any) -> Any:
    """A normalized shape read from a traced tensor's sizes, as plain ints (ONNX LayerNormalization needs them)."""
    return tuple(int(s) for s in shape) if isinstance(shape, (list, tuple, torch.Size)) else shape


def _nonneg(dims: Any, ndim: int) -> Any:
    return [d % ndim for d in dims] if isinstance(dims, (list, tuple)) else dims % ndim


def _one_chunk(args: Sequence[Any], kwargs: Dict[str, Any]) -> bool:
    x = args[0]
    size = args[1] if len(args) > 1 else kwargs.get("split_size", kwargs.get("split_size_or_sections"))
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    return isinstance(x, Tensor) and not isinstance(size, (list, tuple)) and bool(size >= x.shape[dim])


class _TraceFriendly(TorchFunctionMode):
    """Rewrites three calls that the TorchScript-based ONNX exporter gets wrong.

    ``F.layer_norm(x, x.shape[-1:])`` gets a plain-int shape (a traced size is not a constant, which the exporter
    rejects, e.g. Swin-UNETR's encoder norms); ``x.split(n)`` that yields one chunk becomes ``(x,)`` (traced, it
    records the example's size and breaks a dynamic batch); ``x.movedim(-1, 1)`` gets non-negative dims (the
    exporter writes a negative Transpose ``perm``, which ONNX rejects).
    """

    def __torch_function__(self, func: Callable, types: Any, args: Sequence[Any] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in (F.layer_norm, torch.layer_norm):
            args = list(args)
            if len(args) > 1:
                args[1] = _ints(args[1])
            elif "normalized_shape" in kwargs:
                kwargs["normalized_shape"] = _ints(kwargs["normalized_shape"])
        elif func in (Tensor.split, torch.split) and _one_chunk(args, kwargs):
            return (args[0],)
        elif func in (Tensor.movedim, torch.movedim) and len(args) == 3 and not kwargs:
            args = (args[0], _nonneg(args[1], args[0].ndim), _nonneg(args[2], args[0].ndim))
        return func(*args, **kwargs)


@contextlib.contextmanager
def _export_mode(model: nn.Module) -> Iterator[None]:
    """Unchunked frame encoding, trace-friendly calls, no tracer warnings; restores the model's attributes."""
    saved = [(m, a, getattr(m, a)) for m in model.modules() for a in _CHUNK_ATTRS if hasattr(m, a)]
    for m, a, _ in saved:
        setattr(m, a, _CHUNK_ATTRS[a])
    try:
        with warnings.catch_warnings(), _TraceFriendly():
            warnings.simplefilter("ignore")
            yield
    finally:
        for m, a, v in saved:
            setattr(m, a, v)


def example_input(input_size: Sequence[int], batch: int = 1, seed: int = 0) -> Tensor:
    """A seeded standard-normal input ``(batch, *input_size)``."""
    return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))


def spatial_probes(input_size: Sequence[int], task: str, seed: int = 2) -> List[Tensor]:
    """Inputs at half and at twice the spatial size of ``input_size`` (batch 1) that decide dynamic spatial size;
    empty when a spatial side is odd."""
    axes = [d - 1 for d in spatial_axes(len(input_size) + 1, task)]
    if any(input_size[a] % 2 or input_size[a] < 2 for a in axes):
        return []
    out = []
    for scale in (0.5, 2):
        size = [int(s * scale) if i in axes else int(s) for i, s in enumerate(input_size)]
        out.append(example_input(size, 1, seed))
    return out


def _forward(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        out = fn(x)
    if not isinstance(out, Tensor):
        raise RunError(f"export needs a forward that returns one tensor, got {type(out).__name__}")
    return out


def _max_diff(fn: Callable[[Tensor], Tensor], x: Tensor, ref: Tensor) -> float:
    """``max |fn(x) - ref|``; ``inf`` when ``fn`` fails or gives another shape."""
    try:
        out = _forward(fn, x)
    except Exception:  # noqa: BLE001 - a graph that cannot run at this size simply does not match
        return float("inf")
    if out.shape != ref.shape:
        return float("inf")
    return float((out.float() - ref.float()).abs().max()) if out.numel() else 0.0


# --------------------------------------------------------------------------------------------------- ONNX
def _onnx_axes(in_ndim: int, out_ndim: int, task: str, spatial: bool) -> Dict[str, Dict[int, str]]:
    names = {2: ["height", "width"], 3: ["depth", "height", "width"]}
    axes_in = spatial_axes(in_ndim, task) if spatial else []
    labels = dict(zip(axes_in, names.get(len(axes_in), [f"dim{d}" for d in axes_in])))
    out = {0: "batch", **({d: labels[d] for d in axes_in} if out_ndim == in_ndim else {})}
    return {INPUT_NAME: {0: "batch", **labels}, OUTPUT_NAME: out}


def _user_frame(text: str) -> str:
    """The first ``file:line`` of an exporter message outside torch and this module ('' when none)."""
    skip = (os.path.dirname(torch.__file__), os.path.abspath(__file__))
    for path, line in re.findall(r"([^\s(#]+\.py)[(:](\d+)", text):
        if not os.path.abspath(path).startswith(skip):
            return f"{path}:{line}"
    return ""


def _onnx_error(e: Exception, name: str, opset: int) -> Optional[UserError]:
    """A one-line :class:`UserError` naming the operator (and source line) the exporter could not convert."""
    from torch.onnx.errors import SymbolicValueError, UnsupportedOperatorError

    text, hint = str(e), "(try --format torchscript)"
    if isinstance(e, UnsupportedOperatorError):
        op = re.search(r"operator '([^']+)'", text)
        return UserError(f"{name}: cannot export to ONNX: operator {op.group(1) if op else text.splitlines()[0]} "
                         f"is not supported at opset {opset} {hint}")
    if isinstance(e, SymbolicValueError):
        arg = re.search(r"argument '(\w+)' of node '(\w+)'", text)
        what = f"argument {arg.group(1)} of aten::{arg.group(2)}" if arg else "an operator argument"
        where = _user_frame(text)
        return UserError(f"{name}: cannot export to ONNX: {what}{' at ' + where if where else ''} is computed from "
                         f"the input's shape, but ONNX needs a constant {hint}")
    return None


def _onnx_bytes(model: nn.Module, x: Tensor, out_ndim: int, task: str, spatial: bool, name: str,
                opset: int) -> bytes:
    require("onnx")
    buf = io.BytesIO()
    try:
        with _export_mode(model), silenced_fd(1):  # the exporter dumps graphs to fd 1 from C++
            torch.onnx.export(model, (x,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=_onnx_axes(x.ndim, out_ndim, task, spatial), opset_version=opset,
                              do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - converted when it is a known conversion failure
        err = _onnx_error(e, name, opset)
        if err is None:
            raise
        raise err from None
    return buf.getvalue()


def _onnx_with_metadata(data: bytes, meta: Dict[str, Any]) -> bytes:
    onnx = require("onnx")
    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name, proto.doc_string = "vtk", f"vtk export of {meta['model']} (metadata_props['vtk'])"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# -------------------------------------------------------------------------------------------- TorchScript
def _torchscript(model: nn.Module, x: Tensor) -> torch.jit.ScriptModule:
    with _export_mode(model), torch.no_grad():
        return torch.jit.trace(model, (x,), check_trace=False)


def _torchscript_bytes(module: torch.jit.ScriptModule, meta: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(module, buf, _extra_files={EXTRA_FILE: json.dumps(meta)})
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- export
@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how well it matches PyTorch."""

    path: Path
    format: str
    max_abs_diff: float  # max |export - PyTorch| on a batch of 2 (the trace used 1)
    dynamic_spatial: bool
    seconds: float
    bytes: int
    metadata: Dict[str, Any]


def format_from_suffix(path: Union[str, os.PathLike], fmt: Optional[str] = None) -> str:
    """``fmt`` checked, or the format that ``path``'s suffix implies (``.onnx``; ``.pt``/``.ts``/``.jit``)."""
    if fmt is not None:
        return check_choice("--format", fmt, FORMATS, error=UserError)
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UserError(f"--out {path}: cannot tell the format from {suffix or 'no suffix'!r}; pass --format "
                        f"{' or '.join(FORMATS)}")
    return _SUFFIXES[suffix]


class _Trial:
    """One export attempt: the in-memory artefact and a callable that runs it like ``model.forward``."""

    def __init__(self, model: nn.Module, fmt: str, x: Tensor, out_ndim: int, task: str, spatial: bool, name: str,
                 opset: int) -> None:
        self.fmt = fmt
        if fmt == "onnx":
            self.data = _onnx_bytes(model, x, out_ndim, task, spatial, name, opset)
            self.run = onnx_runner(onnx_session(self.data))
        else:
            self.module = _torchscript(model, x)
            self.run = self.module

    def serialize(self, meta: Dict[str, Any]) -> bytes:
        return _onnx_with_metadata(self.data, meta) if self.fmt == "onnx" else _torchscript_bytes(self.module, meta)


def _runs_at(model: nn.Module, probe: Tensor) -> Tuple[Optional[Tensor], str]:
    """``(model(probe), '')``, or ``(None, why not)`` when the model itself needs its nominal size."""
    try:
        return _forward(model, probe), ""
    except Exception:  # noqa: BLE001 - any failure means: not at this size
        return None, f"the model does not run at input {'x'.join(map(str, probe.shape))}"


def _spatial_reason(model: nn.Module, trial: "_Trial", probes: List[Tensor], atol: float) -> str:
    """Why the export cannot have a dynamic spatial size ('' when it can)."""
    for probe in probes:
        ref, reason = _runs_at(model, probe)
        if ref is None:
            return reason
        diff = _max_diff(trial.run, probe, ref)
        if not diff <= atol:
            shown = "x".join(map(str, probe.shape))
            return f"the {trial.fmt} graph differs from PyTorch by {diff:.3g} at input {shown}"
    return ""


def _spatial_trial(model: nn.Module, fmt: str, x: Tensor, out_ndim: int, task: str, name: str, opset: int,
                   dynamic_spatial: Optional[bool], atol: float) -> Tuple["_Trial", bool]:
    """Export with a dynamic spatial size when the export matches PyTorch at half and at twice the input size
    (the tracer freezes Python-side shape logic such as position-embedding interpolation or window padding)."""
    if dynamic_spatial is not False:
        probes = spatial_probes(x.shape[1:], task)
        reason = _runs_at(model, probes[0])[1] if probes else "an odd spatial side"
        if not reason:  # worth a dynamic trial: the model runs at half its size
            trial = _Trial(model, fmt, x, out_ndim, task, True, name, opset)
            reason = _spatial_reason(model, trial, probes, atol)
            if not reason:
                return trial, True
        if dynamic_spatial:
            raise UserError(f"{name}: --dynamic-spatial: {reason}; export with a static spatial size")
    return _Trial(model, fmt, x, out_ndim, task, False, name, opset), False


def export_model(model: nn.Module, path: Union[str, os.PathLike], fmt: str, metadata: Dict[str, Any], *,
                 dynamic_spatial: Optional[bool] = None, atol: float = 1e-4, opset: int = OPSET) -> ExportReport:
    """Export ``model`` to ``path`` (``"onnx"`` or ``"torchscript"``) with ``metadata`` and check parity.

    The graph is traced on a batch of 1 at ``metadata['input_size']`` and compared with PyTorch on a batch of 2
    (and at half and twice the spatial size when it is exported with a dynamic one); the file is written
    atomically only when the largest absolute difference is within ``atol``.

    Args:
        model: The model (put in eval mode).
        path: Destination file; its folder is created.
        fmt: ``"onnx"`` or ``"torchscript"``.
        metadata: From :func:`protocol_metadata` (needs ``model``, ``task`` and ``input_size``).
        dynamic_spatial: ``None`` (auto: dynamic when the export matches PyTorch at half and at twice the
            input's spatial size), ``True`` (required; a :class:`UserError` otherwise) or ``False``.
        atol: Largest accepted ``|export - PyTorch|`` (fp32).
        opset: ONNX opset (>= 17).

    Raises:
        UserError: An operator ONNX lacks (the message names it and the model), a bad format, a missing extra.
        RunError: The export does not match PyTorch within ``atol``.
    """
    fmt = check_choice("--format", fmt, FORMATS, error=UserError)
    if opset < 17:
        raise UserError(f"--opset {opset}: must be >= 17")
    start, name, task = time.perf_counter(), metadata["model"], metadata["task"]
    model = model.eval()
    x1, x2 = example_input(metadata["input_size"], 1, 0), example_input(metadata["input_size"], 2, 1)
    ref1 = _forward(model, x1)
    trial, spatial = _spatial_trial(model, fmt, x1, ref1.ndim, task, name, opset, dynamic_spatial, atol)
    diff = _max_diff(trial.run, x2, _forward(model, x2))
    if not diff <= atol:
        raise RunError(f"{name}: the {fmt} export differs from PyTorch by {diff:.3g} on a batch of 2 "
                       f"(limit {atol:g}); nothing written")
    meta = {**metadata, "format": fmt, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
            "output_size": list(ref1.shape[1:]), "dynamic": {"batch": True, "spatial": spatial},
            "max_abs_diff": diff, **({"opset": opset} if fmt == "onnx" else {})}
    data = trial.serialize(meta)
    path = atomic_write_bytes(path, data)
    return ExportReport(path, fmt, diff, spatial, time.perf_counter() - start, len(data), meta)

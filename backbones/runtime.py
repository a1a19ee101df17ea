"""Run a vtk export (ONNX through onnxruntime on the CPU, or TorchScript) like the model it came from.

:func:`load_exported` reads a file written by :func:`backbones.export.export_model` / ``vtk models export`` and
returns an :class:`ExportedModel`, a callable that behaves like the model's ``forward`` on torch tensors (dynamic
batch, no gradients, the result on the input's device), plus the JSON metadata written at export: the registry
entry and the test protocol (segmentation: ``roi``, ``spacing``, ``a_min``/``a_max``, ``class_names``; video:
``num_frames``, ``stride``, ``crop_size``, ``short_side``, ``views``, ``mean``/``std``, ``class_names``).

:func:`load_model_file` turns such a file into an :class:`ExportRun`: the loaded model and a
:class:`~engine.config.TrainConfig` of no run whose ``data_args`` hold the file's protocol in the keys the
pipelines' ``Predictor`` reads (``medvit.inference``, ``videovit.inference``). An ``ExportRun`` is an
:class:`engine.pretrained.WeightsRun`, so ``engine.load_run`` accepts it and a ``Predictor`` runs the same pre- and
post-processing (sliding windows, resampling to the input's grid; clip sampling, crops, view averaging) around the
exported graph as around the PyTorch model.

Example::

    >>> from backbones.runtime import load_exported, load_model_file
    >>> runner, meta = load_exported("unetr.onnx")             # onnxruntime, CPU execution provider
    >>> probs = runner(torch.randn(2, 1, 96, 96, 96)).softmax(1)
    >>> run = load_model_file("unetr.onnx", "seg")             # run.model is runner, run.cfg the protocol
    >>> from medvit.inference import Predictor
    >>> pred = Predictor.from_model_file("unetr.onnx", device="cpu")
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from engine.errors import UserError
from engine.pretrained import WeightsRun

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "EXTRA_FILE", "REQUIRED_KEYS", "INPUT_NAME", "OUTPUT_NAME",
           "DEPLOY_INSTALL", "PROTOCOL_KEYS", "ExportedModel", "ExportRun", "load_exported", "load_model_file", "exported_model",
           "refuse_with_model_file",
           "run_config", "require", "spatial_axes", "onnx_session", "onnx_runner"]

FORMAT_VERSION = 1
METADATA_KEY = "vtk"  # ONNX metadata_props key holding the JSON metadata
EXTRA_FILE = "vtk.json"  # TorchScript extra file holding the same JSON
INPUT_NAME, OUTPUT_NAME = "input", "output"
REQUIRED_KEYS = ("format_version", "model", "package", "task", "input_size", "input_name", "output_name", "dynamic",
                 "protocol")
# What a Predictor needs from a file's protocol, per task (the rest has the pipelines' defaults).
PROTOCOL_KEYS = {"seg": ("roi",), "video": ("stride", "crop_size")}
DEPLOY_INSTALL = "pip install 'vtk[deploy]'"
_TASK_WORDS = {"seg": "segmentation", "video": "video", "backbone": "backbone"}


def require(module: str) -> Any:
    """Import ``module`` (``onnx``, ``onnxruntime``), or a one-line :class:`UserError` with the install line."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"ONNX export and inference need {module}; install the deploy extra: {DEPLOY_INSTALL}") \
            from None


def spatial_axes(ndim: int, task: str) -> List[int]:
    """Input dims that may vary besides the batch: (H, W) of a video (B, C, T, H, W), else every dim after C."""
    return [3, 4] if task == "video" else list(range(2, ndim))


def onnx_session(data: Union[bytes, str], threads: Optional[int] = None) -> Any:
    """An onnxruntime ``InferenceSession`` on the CPU execution provider (``threads`` intra-op threads)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 4  # fatal only: a failed run raises its own exception
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def onnx_runner(session: Any) -> Callable[[Tensor], Tensor]:
    """``x -> session(x)`` on torch tensors: fp32 numpy in, the output back on ``x``'s device."""
    def run(x: Tensor) -> Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: arr})[0]).to(x.device)
    return run


class ExportedModel:
    """A loaded export that runs like the model's ``forward``: ``runner(x) -> Tensor`` (no gradients).

    ONNX files run in an onnxruntime ``InferenceSession`` (CPU), TorchScript archives with ``torch.jit.load``.
    Inputs are checked against the recorded ``input_size`` (channels, frames and, when the export is static in
    space, the spatial size; the batch is always free). ``eval()`` and ``to()`` return the runner itself, so code
    written for an ``nn.Module`` in eval mode takes it as is.
    """

    def __init__(self, path: Path, fmt: str, metadata: Dict[str, Any], run: Callable[[Tensor], Tensor]) -> None:
        self.path, self.format, self.metadata, self._run = path, fmt, metadata, run
        self.num_classes = metadata.get("num_classes")

    def expected_shape(self) -> List[Optional[int]]:
        """``[None (batch), C, ...]`` with ``None`` at every dimension that may vary."""
        size = [None] + list(self.metadata["input_size"])
        if self.metadata["dynamic"].get("spatial"):
            for d in spatial_axes(len(size), self.metadata["task"]):
                size[d] = None
        return size

    def _check(self, x: Tensor) -> None:
        want = self.expected_shape()
        if x.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, x.shape)):
            shown = "x".join("N" if w is None else str(w) for w in want)
            raise UserError(f"{self.path}: {self.metadata['model']} expects input {shown}, got "
                            f"{'x'.join(map(str, x.shape))}")

    def __call__(self, x: Tensor) -> Tensor:
        self._check(x)
        with torch.no_grad():
            return self._run(x)

    def eval(self) -> "ExportedModel":
        return self

    def to(self, *args: Any, **kwargs: Any) -> "ExportedModel":
        return self

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, format={self.format!r}, model={self.metadata['model']!r})"


def _parse_metadata(path: Path, text: Union[str, bytes, None], where: str) -> Dict[str, Any]:
    if not text:
        raise UserError(f"{path}: not a vtk export: {where} (export one with `vtk models export`)")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: bad vtk metadata ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: bad vtk metadata (a JSON {type(meta).__name__}, not an object)")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise UserError(f"{path}: not a vtk export: its vtk metadata lacks key(s) {', '.join(missing)}")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise UserError(f"{path}: vtk export format {meta['format_version']} is newer than this vtk reads "
                        f"({FORMAT_VERSION}); upgrade vtk")
    return meta


def _load_torchscript(path: Path) -> Tuple[Any, Dict[str, Any]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if not any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise UserError(f"{path}: not a TorchScript archive (a zip file without TorchScript code: a torch.save "
                        "checkpoint or state dict is not an export; export one with `vtk models export`)")
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise UserError(f"{path}: not a TorchScript archive ({first}); a torch.save checkpoint is not an export")\
            from None
    meta = _parse_metadata(path, extra[EXTRA_FILE], f"the TorchScript archive has no extra file {EXTRA_FILE!r}")
    return module.eval(), meta


def _load_onnx(path: Path, threads: Optional[int]) -> Tuple[Any, Dict[str, Any]]:
    if importlib.util.find_spec("onnxruntime") is None:
        raise UserError(f"{path}: not a TorchScript archive (not a zip file); reading it as ONNX needs onnxruntime: "
                        f"install the deploy extra: {DEPLOY_INSTALL}")
    try:
        session = onnx_session(str(path), threads)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for unreadable files
        first = str(e).strip().splitlines()[0][:160]
        raise UserError(f"{path}: neither an ONNX model nor a TorchScript archive ({first})") from None
    props = session.get_modelmeta().custom_metadata_map
    meta = _parse_metadata(path, props.get(METADATA_KEY), f"its ONNX metadata_props have no {METADATA_KEY!r} entry")
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([meta["input_name"]], [meta["output_name"]]):
        raise UserError(f"{path}: graph inputs/outputs {names} do not match the vtk metadata "
                        f"({meta['input_name']!r} -> {meta['output_name']!r})")
    return session, meta


def _torchscript_runner(module: Any) -> Callable[[Tensor], Tensor]:
    device = {"now": torch.device("cpu")}

    def run(x: Tensor) -> Tensor:
        if x.device != device["now"]:
            module.to(x.device)
            device["now"] = x.device
        return module(x)
    return run


def load_exported(path: Union[str, os.PathLike], *, threads: Optional[int] = None) -> Tuple[ExportedModel,
                                                                                           Dict[str, Any]]:
    """Load a vtk export (``.onnx`` or TorchScript; told apart by the content) for inference.

    Args:
        path: A file written by :func:`backbones.export.export_model` / ``vtk models export``.
        threads: onnxruntime intra-op threads (default: ``torch.get_num_threads()``).

    Returns:
        ``(runner, metadata)``: ``runner(x)`` behaves like the model's forward on a CPU or CUDA tensor (the result
        comes back on ``x``'s device); ``metadata`` is the JSON written at export (``input_size``, ``protocol``,
        ``class_names``, ``mean``/``std``, ``dynamic``, ...).

    Raises:
        UserError: The file is missing, is neither ONNX nor TorchScript, or is not a vtk export (the message
            names the missing metadata entry or key); an ONNX file without onnxruntime installed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        module, meta = _load_torchscript(path)
        return ExportedModel(path, "torchscript", meta, _torchscript_runner(module)), meta
    session, meta = _load_onnx(path, threads)
    return ExportedModel(path, "onnx", meta, onnx_runner(session)), meta


# ------------------------------------------------------------------------------------- predictors' bridge
@dataclasses.dataclass
class ExportRun(WeightsRun):
    """An exported file standing in for a run: ``model`` is the :class:`ExportedModel`, ``cfg`` the file's
    protocol as a :class:`~engine.config.TrainConfig` (``task``, ``model``, ``model_args``, ``data_args``), and
    there are no weights (``state_dict`` is empty; a ``Predictor`` takes ``model`` instead of building one)."""

    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def state_dict(self) -> Dict[str, Any]:
        return {}


def _seg_data_args(meta: Dict[str, Any], p: Dict[str, Any]) -> Dict[str, Any]:
    """The protocol in medvit's ``data_args`` keys (``medvit.inference.Predictor`` reads them)."""
    da: Dict[str, Any] = {"roi": [int(r) for r in p["roi"]], "names": list(meta.get("class_names") or []),
                          "spatial_dims": int(meta.get("spatial_dims") or len(p["roi"]))}
    da.update({k: p[k] for k in ("spacing", "a_min", "a_max") if p.get(k) is not None})
    return da


def _video_data_args(meta: Dict[str, Any], p: Dict[str, Any]) -> Dict[str, Any]:
    """The protocol in videovit's ``data_args`` keys (``videovit.task.video_options`` reads them)."""
    crop = int(p["crop_size"])
    da: Dict[str, Any] = {"num_frames": int(meta["input_size"][1]), "stride": int(p["stride"]), "crop_size": crop,
                          "val_views": str(p.get("views") or "1x1")}
    da.update({k: [float(v) for v in meta[k]] for k in ("mean", "std") if meta.get(k)})
    if p.get("short_side") and int(p["short_side"]) != crop:
        da["eval_short_side"] = int(p["short_side"])
    if meta.get("class_names"):
        da["classes"] = [str(c) for c in meta["class_names"]]
    return da


def run_config(meta: Dict[str, Any], path: Union[str, os.PathLike] = "") -> Any:
    """The :class:`~engine.config.TrainConfig` of no run that an exported file's metadata describes.

    Raises:
        UserError: The metadata's protocol lacks what its task's predictor needs (the message names the keys).
    """
    from engine.config import TrainConfig

    task, p = meta["task"], dict(meta.get("protocol") or {})
    missing = [k for k in PROTOCOL_KEYS.get(task, ()) if p.get(k) is None]
    if missing:
        raise UserError(f"{path}: not a usable vtk export: its vtk protocol lacks key(s) {', '.join(missing)}")
    ma = dict(meta.get("model_args") or {})
    size = list(meta["input_size"])
    ma.setdefault("in_chans", int(size[0]))
    if meta.get("num_classes"):
        ma["num_classes"] = int(meta["num_classes"])
    if task == "seg":
        da, data = _seg_data_args(meta, p), str(p.get("dataset") or "")
    elif task == "video":
        da, data = _video_data_args(meta, p), ""
        ma.update(num_frames=int(size[1]), img_size=int(size[-1]))
    else:
        da, data = {}, ""
    return TrainConfig(task=task, model=str(meta["model"]), model_args=ma, data=data, data_args=da)


def exported_model(source: Any) -> Optional[ExportedModel]:
    """The :class:`ExportedModel` of an :class:`ExportRun`, else ``None`` (a Predictor then builds its model)."""
    return source.model if isinstance(source, ExportRun) else None


def refuse_with_model_file(model_file: Union[str, os.PathLike], options: Mapping[str, Any]) -> None:
    """``--model-file`` replays the model and protocol in the file: refuse any other source or protocol option.

    Args:
        model_file: The ``--model-file`` path (for the message).
        options: ``{"--checkpoint": value, "--model": value, ...}``; ``None`` or ``[]`` means not given.

    Raises:
        UserError: ``"--checkpoint: not with --model-file m.onnx (the file holds its model and protocol)"``.
    """
    given = [name for name, value in options.items() if value is not None and value != []]
    if given:
        raise UserError(f"{given[0]}: not with --model-file {model_file} (the file holds its model and protocol)")


def load_model_file(path: Union[str, os.PathLike], task: str, *, threads: Optional[int] = None) -> ExportRun:
    """Load a vtk export for ``task``'s predictor (``"seg"`` or ``"video"``).

    Raises:
        UserError: Everything :func:`load_exported` raises; an export of another task (a backbone, a video model
            given to ``vtk seg predict``); a protocol without what the predictor needs.
    """
    model, meta = load_exported(path, threads=threads)
    if meta["task"] != task:
        raise UserError(f"--model-file {path}: a {_TASK_WORDS.get(meta['task'], meta['task'])} export "
                        f"({meta['model']}), not a {_TASK_WORDS.get(task, task)} one")
    return ExportRun(Path(path), run_config(meta, path), model, None, meta)

"""Checkpoints: safetensors weights plus a ``weights_only`` training state, every write atomic.

``checkpoints/<name>.safetensors`` holds the model weights; its metadata has ``task``, ``model``, JSON
``model_args``, ``step`` and the full JSON ``config``, so the file alone rebuilds its model.
``checkpoints/<name>.state.pt`` holds optimizer, scheduler, scaler, step, epoch position, best metric and the
RNG states; it contains only tensors and plain containers and is read with ``torch.load(weights_only=True)``.

Every file is written to a temporary file in the same folder, flushed, fsynced and moved into place with
``os.replace``: a crash or a failing serializer leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save
from torch import nn

from engine.config import TrainConfig
from engine.errors import UserError
from engine.io import atomic_write, atomic_write_text, fsync_dir

__all__ = ["atomic_write", "atomic_write_text", "serialize_weights", "serialize_state", "save_checkpoint",
           "load_state", "load_weights", "read_metadata", "load_run", "checkpoint_paths", "unwrap_model",
           "recover_checkpoints", "save_weights"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def serialize_weights(model: nn.Module, cfg: TrainConfig, step: int) -> bytes:
    """safetensors bytes of ``model``'s state dict with the rebuild metadata."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in unwrap_model(model).state_dict().items()}
    metadata = {"task": cfg.task, "model": cfg.model, "model_args": json.dumps(cfg.model_args), "step": str(step),
                "config": json.dumps(cfg.to_dict())}
    return safetensors_save(tensors, metadata=metadata)


def serialize_state(state: Dict[str, Any]) -> bytes:
    """``torch.save`` bytes of a training-state dict (tensors and plain containers only)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def checkpoint_paths(folder: os.PathLike | str, name: str) -> Tuple[Path, Path]:
    """``(folder/name.safetensors, folder/name.state.pt)``."""
    folder = Path(folder)
    return folder / f"{name}.safetensors", folder / f"{name}.state.pt"


def _write_bytes(f: BinaryIO, data: bytes, chunk: int = 1 << 26) -> None:
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        f.write(view[start:start + chunk])


def save_checkpoint(folder: os.PathLike | str, name: str, weights: bytes, state: bytes) -> Path:
    """Write ``name.safetensors`` and ``name.state.pt`` as one atomic unit; returns the weights path.

    Both files are first written in full to unique temporaries; then a journal ``.name.commit.json`` naming both
    is written atomically (the commit point); then both are renamed into place and the journal removed. A crash
    before the commit point leaves the previous pair untouched; a crash after it is rolled forward by
    :func:`recover_checkpoints` when the run starts again. So a pair on disk is always from the same step.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wpath, spath = checkpoint_paths(folder, name)
    moves = []
    try:
        for final, data in ((wpath, weights), (spath, state)):
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".pending", dir=folder)
            moves.append((tmp, final))
            with os.fdopen(fd, "wb") as f:
                _write_bytes(f, data)
                f.flush()
                os.fsync(f.fileno())
        journal = _journal_path(folder, name)
        atomic_write_text(journal, json.dumps([[Path(t).name, p.name] for t, p in moves]))
    except BaseException:
        for tmp, _ in moves:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    _roll_forward(folder, journal)
    return wpath


def _journal_path(folder: Path, name: str) -> Path:
    return folder / f".{name}.commit.json"


def _roll_forward(folder: Path, journal: Path) -> None:
    for tmp, final in json.loads(journal.read_text()):
        if (folder / tmp).exists():
            os.replace(folder / tmp, folder / final)
    fsync_dir(folder)
    journal.unlink()
    fsync_dir(folder)


def recover_checkpoints(folder: os.PathLike | str) -> List[str]:
    """Finish or undo checkpoint saves that a crash interrupted; returns what was done, one line each.

    A committed save (its journal exists) is rolled forward; uncommitted ``.pending`` files are removed.
    """
    folder = Path(folder)
    done: List[str] = []
    if not folder.is_dir():
        return done
    for journal in sorted(folder.glob(".*.commit.json")):
        try:
            _roll_forward(folder, journal)
            done.append(f"completed the interrupted save recorded in {journal.name}")
        except (OSError, ValueError) as e:
            raise UserError(f"{journal}: cannot complete an interrupted checkpoint save ({_short(e)})") from None
    for pending in folder.glob(".*.pending"):
        pending.unlink()
        done.append(f"removed the unfinished {pending.name}")
    return done


def save_weights(path: os.PathLike | str, weights: bytes) -> Path:
    """Atomically write a weights-only ``.safetensors`` file (periodic ``step-NNNNNNN`` snapshots)."""
    return atomic_write(path, lambda f: _write_bytes(f, weights))


def read_metadata(path: os.PathLike | str) -> Dict[str, str]:
    """The safetensors metadata of a checkpoint file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({_short(e)})") from None


def load_weights(path: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """The state dict stored in a ``.safetensors`` checkpoint (on CPU)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({_short(e)})") from None


def load_state(path: os.PathLike | str) -> Dict[str, Any]:
    """The training state in a ``.state.pt`` file, read with ``weights_only=True``."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such training-state file (needed to resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"{path}: not a readable training state ({_short(e)})") from None


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def _resolve_weights(path: Path, which: Optional[str]) -> Path:
    if path.is_file():
        if not path.name.lower().endswith(".safetensors"):
            raise UserError(f"{path}: not a vtk run checkpoint (.safetensors); for a released weights file use "
                            f"--model NAME --pretrained {path}, or convert it once with `vtk models convert`")
        return path
    if not path.is_dir():
        raise UserError(f"{path}: no such run folder or checkpoint file")
    names = (which,) if which else ("best", "last")
    for name in names:
        candidate = path / "checkpoints" / f"{name}.safetensors"
        if candidate.is_file():
            return candidate
    raise UserError(f"{path}: no checkpoints/{' or '.join(n + '.safetensors' for n in names)} in this run folder")


def load_run(path: os.PathLike | str, which: Optional[str] = None) -> Tuple[TrainConfig, Dict[str, torch.Tensor]]:
    """Load a trained model's config and weights.

    Args:
        path: A run folder (uses ``checkpoints/best``, else ``last``), a ``.safetensors`` checkpoint, or an
            :class:`engine.pretrained.WeightsRun` (a released weights file loaded in memory).
        which: ``"best"`` or ``"last"`` to pick a run folder's checkpoint explicitly.

    Returns:
        ``(cfg, state_dict)``. ``cfg`` comes from the checkpoint's metadata (the full config of the run that wrote
        it); a checkpoint without it falls back to the run's ``config.yaml`` or to ``task``/``model``/``model_args``.
    """
    from engine.pretrained import WeightsRun

    if isinstance(path, WeightsRun):  # a weights file loaded in memory (``--model NAME --pretrained FILE``)
        return path.cfg, path.state_dict
    path = Path(path)
    wpath = _resolve_weights(path, which)
    meta = read_metadata(wpath)
    state_dict = load_weights(wpath)
    return _config_from_metadata(meta, wpath), state_dict


def _config_from_metadata(meta: Dict[str, str], wpath: Path) -> TrainConfig:
    try:
        if "config" in meta:
            return TrainConfig.from_dict(json.loads(meta["config"]), source=str(wpath))
        run_yaml = wpath.parent.parent / "config.yaml"
        if run_yaml.is_file():
            return TrainConfig.from_yaml(run_yaml)
        if not meta.get("model"):  # a foreign .safetensors (a released weights file), not a vtk run's
            raise UserError(f"{wpath}: not a vtk run checkpoint (its metadata names no model); for a released "
                            f"weights file use --model NAME --pretrained {wpath}")
        return TrainConfig(task=meta.get("task", ""), model=meta.get("model", ""),
                           model_args=json.loads(meta.get("model_args", "{}")))
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{wpath}: bad checkpoint metadata ({_short(e)})") from None

"""Saved per-view predictions (``--save-predictions FILE.npz``) and offline re-scoring / late fusion.

Like mmaction2's ``--dump``, ``vtk video eval --save-predictions val.npz`` keeps the softmax of every view of every
video, so a split can be re-scored without decoding it again, and runs can be late-fused: ``vtk video score a.npz
b.npz`` averages each video's view-averaged probabilities over the files (the two-stream / multi-model fusion of
Simonyan & Zisserman, arXiv:1406.2199, and of SlowFast's ensembles) and writes the same ``metrics.json`` as eval.

File format (``numpy.savez``, no pickles): ``videos`` ``(N,)`` str, ``labels`` ``(N,)`` int64 (``-1``: unknown,
from predict), ``view_probs`` ``(N, V, K)`` float32 (clip-major views), ``classes`` ``(K,)`` str, ``meta`` a JSON
string (``checkpoint``, ``data``, ``data_dir``, ``split``, ``views``, ``missing``, ``format``).

Example::

    >>> from videovit.score import score_files
    >>> ev = score_files(["runs/a/val-4x3.npz", "runs/b/val-4x3.npz"])   # an inference.Evaluation
    >>> ev.metrics["top1"]
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import torch

from engine.errors import UserError
from engine.io import atomic_write

__all__ = ["FORMAT", "SavedPredictions", "save_predictions", "load_predictions", "score_files"]

FORMAT = "vtk-video-predictions/1"
PathLike = Union[str, Path]


@dataclasses.dataclass
class SavedPredictions:
    """The content of one ``.npz`` (see the module docstring)."""

    videos: List[str]
    labels: np.ndarray
    view_probs: np.ndarray
    classes: List[str]
    meta: Dict[str, Any]


def save_predictions(path: PathLike, videos: Sequence[str], view_probs: Any, labels: Any, classes: Sequence[str],
                     **meta: Any) -> Path:
    """Write ``path`` (atomic) with the per-view softmax ``view_probs`` ``(N, V, K)`` of ``videos``.

    Raises:
        ValueError: Shapes that do not agree (the values are in the message).
    """
    vp = np.asarray(view_probs, dtype=np.float32)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if vp.ndim != 3 or vp.shape[0] != len(videos) or lab.shape[0] != len(videos) or vp.shape[2] != len(classes):
        raise ValueError(f"view_probs {vp.shape}, {len(videos)} videos, labels {lab.shape}, {len(classes)} classes "
                         "do not agree (expected (N, V, K), N, (N,), K)")
    buf = io.BytesIO()
    np.savez(buf, videos=np.asarray(list(videos), dtype=str), labels=lab, view_probs=vp,
             classes=np.asarray(list(classes), dtype=str), meta=np.asarray(json.dumps({**meta, "format": FORMAT})))
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_predictions(path: PathLike) -> SavedPredictions:
    """Read a file written by :func:`save_predictions`.

    Raises:
        UserError: Missing, unreadable or not a vtk predictions file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such predictions file")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            saved = SavedPredictions([str(v) for v in z["videos"]], z["labels"].astype(np.int64),
                                     z["view_probs"].astype(np.float32), [str(c) for c in z["classes"]], meta)
    except KeyError as e:
        raise UserError(f"{path}: not a vtk predictions file (no {e} array)") from None
    except Exception as e:  # noqa: BLE001 - zipfile, numpy and json each raise their own errors
        raise UserError(f"{path}: unreadable predictions file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if saved.view_probs.shape[:1] != (len(saved.videos),) or saved.view_probs.shape[2:] != (len(saved.classes),):
        raise UserError(f"{path}: view_probs {saved.view_probs.shape} does not match {len(saved.videos)} videos x "
                        f"{len(saved.classes)} classes")
    return saved


def _check_same(first: SavedPredictions, other: SavedPredictions, a: Path, b: Path) -> None:
    if other.classes != first.classes:
        raise UserError(f"{b}: its {len(other.classes)} classes differ from those of {a} ({len(first.classes)})")
    if other.videos != first.videos:
        diff = len(set(other.videos) ^ set(first.videos))
        raise UserError(f"{b}: its {len(other.videos)} videos are not those of {a} ({len(first.videos)}; "
                        f"{diff} differ{'' if diff else ', same set in another order'})")
    if not np.array_equal(other.labels, first.labels):
        raise UserError(f"{b}: labels differ from those of {a}")


def score_files(paths: Sequence[PathLike]):
    """Re-score one saved file, or late-fuse several (mean of the per-video, view-averaged softmax).

    Returns:
        A :class:`videovit.inference.Evaluation` (``probs`` the fused ``(N, K)``; ``view_probs`` the views of
        every file side by side, ``(N, sum V, K)``) for :func:`videovit.report.write_eval_report`.

    Raises:
        UserError: No file, an unreadable file, files of different videos, labels or classes, or predictions
            without labels (from ``vtk video predict``).
    """
    from .inference import Evaluation
    from .task import classification_metrics

    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("vtk video score: give one or more predictions files")
    saved = [load_predictions(p) for p in paths]
    for p, s in zip(paths[1:], saved[1:]):
        _check_same(saved[0], s, paths[0], p)
    first = saved[0]
    if (first.labels < 0).any():
        raise UserError(f"{paths[0]}: {int((first.labels < 0).sum())} videos have no label (saved by predict); "
                        "score needs files saved by vtk video eval")
    per_file = [torch.from_numpy(s.view_probs).mean(1) for s in saved]  # each (N, K), as eval averages views
    probs = per_file[0] if len(per_file) == 1 else torch.stack(per_file).mean(0)
    labels = torch.from_numpy(first.labels)
    metrics = classification_metrics(probs, labels, len(first.classes))
    meta = [s.meta for s in saved]

    def joined(key: str) -> str:
        values = [str(m.get(key, "")) for m in meta]
        return values[0] if len(set(values)) == 1 else " + ".join(values)

    ev = Evaluation(probs, labels, metrics, list(first.classes), joined("split"), joined("views"), joined("data"),
                    joined("data_dir"), int(meta[0].get("missing", 0)),
                    torch.from_numpy(np.concatenate([s.view_probs for s in saved], 1)), list(first.videos))
    ev.checkpoint = joined("checkpoint")
    return ev

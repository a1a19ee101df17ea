"""Files written by ``vtk video eval`` and ``vtk video predict``: metrics.json, the confusion matrix, contact sheets
and predictions.json. Every file goes through :mod:`engine.io` (atomic: a crash never leaves half a file).

Example::

    >>> from videovit.inference import Predictor
    >>> from videovit.report import write_eval_report
    >>> p = Predictor("runs/ts8", views="2x3")
    >>> write_eval_report("runs/ts8/eval-val-2x3", p.evaluate("val"), checkpoint="runs/ts8")
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from engine.io import atomic_savefig, atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    from .inference import Evaluation, Prediction

__all__ = ["default_eval_dir", "eval_record", "write_eval_report", "plot_confusion", "most_confused", "contact_sheet",
           "contact_sheet_names", "write_contact_sheet", "write_predictions"]

PathLike = Union[str, Path]


def default_eval_dir(checkpoint: PathLike, split: str, views: str) -> Path:
    """``RUN/eval-<split>-<views>`` for a run folder or a ``RUN/checkpoints/<name>.safetensors`` file."""
    checkpoint = Path(checkpoint)
    run = checkpoint if checkpoint.is_dir() else checkpoint.parent.parent
    return run / f"eval-{split}-{views}"


def _finite(value: float) -> Optional[float]:
    """``value``, or ``None`` for NaN (strict JSON; e.g. the mean class accuracy of a split with no videos)."""
    return None if isinstance(value, float) and math.isnan(value) else value


def eval_record(evaluation: "Evaluation", checkpoint: PathLike) -> Dict[str, Any]:
    """The ``metrics.json`` record: where it came from, top-1/top-5, mean class accuracy, per-class, confusion."""
    m, classes = evaluation.metrics, list(evaluation.classes)
    per_class = {c: {"accuracy": _finite(a), "support": s} for c, a, s in zip(classes, m["per_class"], m["support"])}
    return {"checkpoint": str(checkpoint), "data": evaluation.data, "data_dir": evaluation.data_dir,
            "split": evaluation.split, "views": evaluation.views, "videos": evaluation.videos,
            "missing": evaluation.missing, "top1": _finite(m["top1"]), "top5": _finite(m["top5"]),
            "mean_class_accuracy": _finite(m["mean_class_accuracy"]), "per_class": per_class,
            "confusion": m["confusion"], "classes": classes}


def write_eval_report(out: PathLike, evaluation: "Evaluation", checkpoint: PathLike) -> Tuple[Path, Path]:
    """Write ``out/metrics.json`` (:func:`eval_record`) and ``out/confusion.png``; returns both paths."""
    out = Path(out)
    metrics = atomic_write_json(out / "metrics.json", eval_record(evaluation, checkpoint))
    confusion = plot_confusion(evaluation.metrics["confusion"], evaluation.classes, out / "confusion.png")
    return metrics, confusion


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MAX_CONFUSION_CLASSES = 40


def most_confused(confusion: Any, limit: int = MAX_CONFUSION_CLASSES) -> List[int]:
    """Indices of the ``limit`` classes with the most errors (row + column off-diagonal counts), in class order.

    Kinetics-400's full matrix would be a 400 x 400 picture nobody can read; its most confused classes are what a
    user looks for. With ``limit`` or fewer classes every index is returned.
    """
    import numpy as np

    cm = np.asarray(confusion)
    k = len(cm)
    if k <= limit:
        return list(range(k))
    off = cm - np.diag(np.diag(cm))
    errors = off.sum(0) + off.sum(1)  # (K,) false positives + false negatives
    keep = np.argsort(-errors, kind="stable")[:limit]
    return sorted(int(i) for i in keep)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: PathLike) -> Path:
    """Save the confusion matrix (rows: true class, columns: predicted) as a PNG with class names on both axes.

    Over :data:`MAX_CONFUSION_CLASSES` classes only the most confused ones are drawn (see :func:`most_confused`),
    and the title says so, so the picture stays readable and its size bounded.
    """
    import numpy as np

    plt = _pyplot()
    full = np.asarray(confusion)
    keep = most_confused(full)
    cm = full[np.ix_(keep, keep)]
    names = [classes[i] for i in keep]
    k = len(keep)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * k + 2), max(4, 0.45 * k + 2)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k < len(full):
        ax.set_title(f"the {k} most confused of {len(full)} classes", fontsize=9)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    try:
        return atomic_savefig(fig, path)
    finally:
        plt.close(fig)


def contact_sheet(frames: Any, title: str, path: PathLike, indices: Optional[Sequence[int]] = None) -> Path:
    """Save the sampled frames ``(T, H, W, 3)`` in one row (wrapping at 8) with the prediction as title.

    Each frame is captioned with its frame number in the file (``indices``) or, without them, its clip position.
    """
    plt = _pyplot()
    T = len(frames)
    cols = min(T, 8)
    rows = (T + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < T:
            ax.imshow(frames[i])
            ax.set_title(f"frame {int(indices[i])}" if indices is not None else f"t={i}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return atomic_savefig(fig, path)
    finally:
        plt.close(fig)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return Path(path.name)


def contact_sheet_names(files: Sequence[PathLike], root: PathLike) -> Dict[Path, Path]:
    """A distinct relative PNG name per video: its path below ``root`` with ``.png`` for its suffix.

    ``root/a/clip.mp4`` -> ``a/clip.png``, so videos of the same name in different folders keep apart. Videos that
    would still share a name (``clip.mp4`` and ``clip.avi``, or files outside ``root``) get ``-<8 hex digits of
    their path's SHA-1>`` after the stem instead.
    """
    files = [Path(f) for f in files]
    plain = {f: _relative(f, Path(root)).with_suffix(".png") for f in files}
    counts = Counter(plain.values())
    names = {}
    for f, name in plain.items():
        if counts[name] > 1:
            digest = hashlib.sha1(str(f).encode("utf-8")).hexdigest()[:8]
            name = name.with_name(f"{name.stem}-{digest}.png")
        names[f] = name
    return names


def write_contact_sheet(prediction: "Prediction", path: PathLike) -> Path:
    """:func:`contact_sheet` of a prediction's frames titled ``<file>: <top-1 label> (<score>)``."""
    best = prediction.top[0]
    title = f"{prediction.path.name}: {best['label']} ({best['score']:.2f})"
    return contact_sheet(prediction.frames, title, path, prediction.indices)


def write_predictions(out: PathLike, predictions: Dict[str, List[Dict[str, Any]]], failed: Sequence[str],
                      contact_sheets: Optional[Dict[str, str]] = None) -> Path:
    """Write ``out/predictions.json``: ``{"predictions": {file: top-k}, "failed": [file], "contact_sheets": ...}``."""
    record = {"predictions": predictions, "failed": list(failed), "contact_sheets": dict(contact_sheets or {})}
    return atomic_write_json(Path(out) / "predictions.json", record)

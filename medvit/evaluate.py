"""Evaluate a trained seg model on a split of its dataset, case by case, in each label's own grid.

Every case is predicted the way ``vtk seg predict`` does it (:class:`medvit.inference.Predictor`), then scored
per organ by :func:`medvit.metrics.case_metrics` (Dice, HD95 in mm, NSD at a tolerance in mm) and summarised by
:func:`medvit.metrics.summarize`; :func:`medvit.metrics.write_reports` writes the files.

Example::

    >>> result = evaluate_checkpoint("runs/unetr", split="validation", device="cpu")
    >>> write_reports(default_eval_dir("runs/unetr"), result.rows, result.summary, result.names)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from engine.choices import check_choice
from engine.errors import UserError

__all__ = ["SPLITS", "CONVENTION", "EvalResult", "evaluate_checkpoint", "evaluate_split", "eval_case",
           "default_eval_dir", "as_labels"]

SPLITS = ("validation", "training", "all")
CONVENTION = ("both-empty organs are not counted; a false positive or a miss scores Dice 0, NSD 0, "
              "HD95 = image diagonal (mm)")


@dataclasses.dataclass
class EvalResult:
    """What an evaluation returns.

    Attributes:
        rows: One ``{"case", "dice", "hd95", "nsd"}`` per case (arrays over organs 1..K-1, NaN = not counted).
        summary: :func:`medvit.metrics.summarize` plus the evaluation settings (``metrics.json``).
        names: Organ names (no background), in class order.
    """

    rows: List[Dict[str, Any]]
    summary: Dict[str, Any]
    names: List[str]


def as_labels(data: np.ndarray) -> np.ndarray:
    """Integer label ids of a label volume stored as floats."""
    return np.rint(data).astype(np.int64)


def eval_case(pred, item: Dict[str, str], kind: str, tolerance: float) -> Dict[str, Any]:
    """Metrics of one ``{"image", "label"}`` case for the ``--data`` kind ``kind`` (the label's own grid)."""
    from medvit.data.layouts import SYNAPSE_FROM_BTCV, remap_labels
    from medvit.io import check_pair, read_image2d, read_nifti
    from medvit.metrics import case_metrics

    if kind == "folder2d":
        gt = read_image2d(item["label"], mask=True)
        mask = pred.predict_image2d(read_image2d(item["image"]))
        spacing = (1.0, 1.0)
    else:
        img, lab = read_nifti(item["image"]), read_nifti(item["label"])
        check_pair(img, lab)
        gt = as_labels(lab.data)
        if kind == "synapse":
            gt = remap_labels(gt, SYNAPSE_FROM_BTCV)
        mask, spacing = pred.predict_nifti(img), lab.spacing
    m = case_metrics(mask.astype("int64"), gt, pred.num_classes, spacing, tolerance)
    return {"case": Path(item["image"]).name, **m}


def fold_split_items(cfg, kind: str, root: os.PathLike, split: str) -> Optional[List[Dict[str, str]]]:
    """A ``--folds`` run's own fold on its own dataset (``medvit.task.run_split``), else ``None``."""
    if cfg is None or "folds" not in (cfg.data_args or {}) or kind != cfg.data or \
            Path(root).resolve() != Path(cfg.data_dir).resolve():
        return None
    from medvit.task import run_split

    train_items, val_items = run_split(cfg)
    return {"validation": val_items, "training": train_items, "all": train_items + val_items}[split]


def _split_items(kind: str, root: os.PathLike, split: str) -> List[Dict[str, str]]:
    from medvit.data.layouts import resolve_splits

    train_items, val_items = resolve_splits(kind, root)
    return {"validation": val_items, "training": train_items, "all": train_items + val_items}[split]


def evaluate_split(pred, kind: str, root: os.PathLike, split: str = "validation",
                   tolerance: float = 2.0) -> EvalResult:
    """Evaluate ``pred`` (a :class:`~medvit.inference.Predictor`) on ``split`` of the dataset at ``root``.

    Args:
        pred: The model and its run's preprocessing.
        kind: ``--data`` kind (``btcv``, ``synapse``, ``decathlon``, ``folder``, ``folder2d``).
        root: Dataset folder.
        split: ``validation``, ``training`` or ``all``.
        tolerance: NSD tolerance in mm.
    """
    from medvit.metrics import summarize

    check_choice("--split", split, SPLITS)
    items = fold_split_items(getattr(pred, "cfg", None), kind, root, split) or _split_items(kind, root, split)
    names = pred.names[1:] or [f"class {i}" for i in range(1, pred.num_classes)]
    rows = [eval_case(pred, item, kind, tolerance) for item in items]
    summary = summarize(rows, names)
    summary.update(split=split, cases=len(rows), nsd_tolerance_mm=tolerance, convention=CONVENTION)
    return EvalResult(rows, summary, list(names))


def evaluate_checkpoint(checkpoint: os.PathLike, data: Optional[str] = None, data_dir: Optional[os.PathLike] = None,
                        split: str = "validation", tolerance: float = 2.0, *, device: str = "auto",
                        overlap: float = 0.5, sw_batch_size: int = 4, mode: str = "gaussian",
                        amp: bool = False) -> EvalResult:
    """Load a run (folder or ``.safetensors``) and evaluate it; ``data``/``data_dir`` default to the run's.

    Raises:
        UserError: A bad ``split``/``mode``/``overlap``, a run without a dataset, unreadable files.
    """
    from medvit.data.layouts import DATA_CHOICES
    from medvit.inference import Predictor

    check_choice("--split", split, SPLITS)  # before loading the model
    if data is not None:
        check_choice("--data", data, DATA_CHOICES, what="dataset kind")
    pred = Predictor(checkpoint, device, overlap, sw_batch_size, mode, amp)
    kind, root = data or pred.cfg.data, data_dir or pred.cfg.data_dir
    if not kind or not root:
        raise UserError(f"{checkpoint}: the run records no dataset; pass --data and --data-dir")
    result = evaluate_split(pred, kind, root, split, tolerance)
    result.summary.update(checkpoint=str(checkpoint), overlap=overlap, mode=mode)
    return result


def default_eval_dir(checkpoint: os.PathLike) -> Path:
    """``RUN/eval`` for a run folder, the checkpoint's folder's ``eval`` for a ``.safetensors`` file."""
    p = Path(checkpoint)
    return p / "eval" if p.is_dir() else p.parent / "eval"

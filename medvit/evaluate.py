"""Evaluate a trained seg model on a split of its dataset, case by case, in each label's own grid.

Every case is predicted the way ``vtk seg predict`` does it (:class:`medvit.inference.Predictor`, with TTA and
ensembles when asked), then scored per organ by :func:`medvit.metrics.case_metrics` (Dice, HD95 in mm, NSD at a
tolerance in mm; object F1 and object Dice for 2D images) and summarised by :func:`medvit.metrics.summarize`;
:func:`medvit.metrics.write_reports` writes the files.

As nnU-Net does, every case is scored twice: as predicted and after keeping each class's largest connected
component (:mod:`medvit.postprocess`); the summary says which is better on these cases (``postprocessing``) and
:func:`write_choice` leaves that choice where ``--postprocess auto`` of ``vtk seg predict`` finds it.

Example::

    >>> result = evaluate_checkpoint("runs/unetr", split="validation", device="cpu")
    >>> write_reports(default_eval_dir("runs/unetr"), result.rows, result.summary, result.names)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from engine.choices import check_choice
from engine.errors import UserError

__all__ = ["SPLITS", "CONVENTION", "EvalResult", "evaluate_checkpoint", "evaluate_split", "eval_case",
           "default_eval_dir", "as_labels", "write_choice"]

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
    variants: Dict[str, Any] = dataclasses.field(default_factory=dict)  # {"none"|"lcc": (rows, summary)}


def as_labels(data: np.ndarray) -> np.ndarray:
    """Integer label ids of a label volume stored as floats."""
    return np.rint(data).astype(np.int64)


def eval_case(pred, item: Dict[str, str], kind: str, tolerance: float, progress: Any = None,
              variants: Sequence[str] = ("none",)) -> Any:
    """Metrics of one ``{"image", "label"}`` case for the ``--data`` kind ``kind`` (the label's own grid).

    Returns one row ``{"case", "dice", "hd95", "nsd"[, "object_f1", "object_dice"]}``, or with several
    ``variants`` (``none``, ``lcc``) a ``{variant: row}`` dict (the network runs once).
    """
    from medvit.data.check import check_label, check_mask, label_spec
    from medvit.data.layouts import SYNAPSE_FROM_BTCV, remap_labels
    from medvit.io import check_pair, read_image2d, read_nifti
    from medvit.metrics import case_metrics, object_metrics
    from medvit.postprocess import apply_postprocess

    if kind == "folder2d":
        gt = check_mask(item["label"], read_image2d(item["label"], mask=True), pred.num_classes)
        if progress is not None:
            progress.start_case(Path(item["image"]).name, 1)
        mask = pred.predict_image2d(read_image2d(item["image"]))
        spacing = (1.0, 1.0)
    else:
        img, lab = read_nifti(item["image"]), read_nifti(item["label"])
        check_pair(img, lab)
        gt = check_label(lab, pred.num_classes, *label_spec(kind))  # ints in range, or UserError naming it
        if kind == "synapse":
            gt = remap_labels(gt, SYNAPSE_FROM_BTCV)
        mask, spacing = pred.predict(img, progress=progress).mask, lab.spacing
    if progress is not None:
        progress.end_case()
    rows = {}
    for v in variants:
        m = apply_postprocess(mask, v, pred.num_classes).astype("int64")
        row = {"case": Path(item["image"]).name, **case_metrics(m, gt, pred.num_classes, spacing, tolerance)}
        if gt.ndim == 2:
            row.update(object_metrics(m, gt, pred.num_classes))
        rows[v] = row
    return rows if len(variants) > 1 else rows[variants[0]]


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


def evaluate_split(pred, kind: str, root: os.PathLike, split: str = "validation", tolerance: float = 2.0,
                   postprocess: str = "auto", progress: Any = None) -> EvalResult:
    """Evaluate ``pred`` (a :class:`~medvit.inference.Predictor`) on ``split`` of the dataset at ``root``.

    Args:
        pred: The model(s) and the run's preprocessing (its own postprocessing is not applied: both variants
            are scored here).
        kind: ``--data`` kind (``btcv``, ``synapse``, ``decathlon``, ``folder``, ``folder2d``).
        root: Dataset folder.
        split: ``validation``, ``training`` or ``all``.
        tolerance: NSD tolerance in mm.
        postprocess: Which variant the main report holds: ``none``, ``lcc`` or ``auto`` (the better one).
        progress: An :class:`engine.progress.WorkProgress` over the cases, or ``True`` for a new one.
    """
    from medvit.metrics import summarize
    from medvit.postprocess import POSTPROCESS_MODES, choose

    check_choice("--split", split, SPLITS)
    check_choice("--postprocess", postprocess, POSTPROCESS_MODES)
    items = fold_split_items(getattr(pred, "cfg", None), kind, root, split) or _split_items(kind, root, split)
    if progress is True:
        from engine.progress import WorkProgress

        with WorkProgress(len(items)) as bar:
            return evaluate_split(pred, kind, root, split, tolerance, postprocess, bar)
    names = pred.names[1:] or [f"class {i}" for i in range(1, pred.num_classes)]
    saved, pred.postprocess = pred.postprocess, "none"
    try:
        both = [eval_case(pred, item, kind, tolerance, progress, ("none", "lcc")) for item in items]
    finally:
        pred.postprocess = saved
    variants = {}
    for v in ("none", "lcc"):
        rows = [b[v] for b in both]
        variants[v] = (rows, summarize(rows, names))
    better, reason = choose(variants["none"][1], variants["lcc"][1])
    reported = better if postprocess == "auto" else postprocess
    rows, summary = variants[reported]
    summary = dict(summary)
    summary.update(split=split, cases=len(rows), nsd_tolerance_mm=tolerance, convention=CONVENTION,
                   postprocess=reported, tta=bool(pred.settings.tta), tta_axes=list(pred.settings.tta),
                   ensemble=len(pred.members))
    summary["postprocessing"] = dict(
        better=better, reason=reason, split=split, cases=len(rows),
        **{v: {k: variants[v][1].get(f"mean_{k}") for k in ("dice", "hd95", "nsd", "object_f1", "object_dice")
               if f"mean_{k}" in variants[v][1]} for v in ("none", "lcc")})
    return EvalResult(rows, summary, list(names), variants)


def write_choice(out_dir: os.PathLike, result: EvalResult) -> Path:
    """``OUT/postprocessing.json``: the better variant on these cases, read by ``--postprocess auto``."""
    from engine.io import atomic_write_json
    from medvit.postprocess import CHOICE_FILE

    return atomic_write_json(Path(out_dir) / CHOICE_FILE, result.summary["postprocessing"], indent=2)


def evaluate_checkpoint(checkpoint, data: Optional[str] = None, data_dir: Optional[os.PathLike] = None,
                        split: str = "validation", tolerance: float = 2.0, *, device: str = "auto",
                        overlap: float = 0.5, sw_batch_size: int = 4, mode: str = "gaussian",
                        amp: bool = False, precision: str = "auto", tta: Any = False, stitch: str = "auto",
                        postprocess: str = "auto", progress: Any = None,
                        model_file: Optional[os.PathLike] = None, cpu_heap: str = "retain") -> EvalResult:
    """Load a run (folder or ``.safetensors``; a list is an ensemble) and evaluate it; ``data``/``data_dir``
    default to the (first) run's. With ``model_file`` (a ``vtk models export`` file, ``checkpoint`` ``None``) the
    exported graph runs inside the same protocol (:meth:`medvit.inference.Predictor.from_model_file`); it records
    no dataset folder, so ``data_dir`` is needed. On the CPU the C heap keeps freed memory for the next batch of
    windows (``cpu_heap``, :func:`engine.heap.set_cpu_heap_on`).

    Raises:
        UserError: A bad ``split``/``mode``/``overlap``/``stitch``/``postprocess``, a run without a dataset,
            unreadable files.
    """
    from engine.heap import set_cpu_heap_on
    from medvit.data.layouts import DATA_CHOICES
    from medvit.inference import Predictor
    from medvit.postprocess import POSTPROCESS_MODES

    check_choice("--split", split, SPLITS)  # before loading the model
    check_choice("--postprocess", postprocess, POSTPROCESS_MODES)
    if data is not None:
        check_choice("--data", data, DATA_CHOICES, what="dataset kind")
    if model_file is not None:
        pred = Predictor.from_model_file(model_file, device, overlap, sw_batch_size, mode, amp, precision, tta=tta,
                                         stitch=stitch)
        checkpoint = model_file
    else:
        pred = Predictor(checkpoint, device, overlap, sw_batch_size, mode, amp, precision, tta=tta, stitch=stitch)
    kind, root = data or pred.cfg.data, data_dir or pred.cfg.data_dir
    if not kind or not root:
        first = checkpoint[0] if isinstance(checkpoint, (list, tuple)) else checkpoint
        what = ("the exported model records no dataset folder" if model_file is not None
                else "the run records no dataset")
        raise UserError(f"{first}: {what}; pass --data and --data-dir")
    set_cpu_heap_on(pred.device, cpu_heap)
    result = evaluate_split(pred, kind, root, split, tolerance, postprocess, progress)
    srcs = checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    result.summary.update(checkpoint=str(srcs[0]) if len(srcs) == 1 else [str(c) for c in srcs],
                          overlap=overlap, mode=mode)
    return result


def default_eval_dir(checkpoint) -> Path:
    """``RUN/eval`` for a run folder, the checkpoint's folder's ``eval`` for a ``.safetensors`` file; for a list
    (an ensemble) ``eval-ensemble`` beside its first member's."""
    from medvit.postprocess import eval_dir_name

    many = isinstance(checkpoint, (list, tuple))
    p = Path(checkpoint[0] if many else checkpoint)
    name = eval_dir_name(many and len(checkpoint) > 1)
    return p / name if p.is_dir() else p.parent / name

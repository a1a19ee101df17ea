"""Postprocessing of label maps: per-class largest connected component, chosen on validation cases as nnU-Net does.

nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021) removes every connected component of a class but the largest and keeps that
step only when it improves the validation Dice. :func:`keep_largest_component` does the removal (components by
``skimage.measure.label`` with full connectivity, 26 in 3D / 8 in 2D; removed voxels become background);
:func:`choose` compares the two evaluations and :func:`resolve_postprocess` reads the choice that ``vtk seg eval``
wrote (``RUN/eval/postprocessing.json``) for ``--postprocess auto``.

Example::

    >>> clean = keep_largest_component(mask)            # every class of mask, largest component only
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

__all__ = ["POSTPROCESS_MODES", "keep_largest_component", "apply_postprocess", "choose", "resolve_postprocess",
           "CHOICE_FILE", "eval_dir_name"]

POSTPROCESS_MODES = ("lcc", "none", "auto")
CHOICE_FILE = "postprocessing.json"


def keep_largest_component(mask: np.ndarray, classes: Optional[Iterable[int]] = None) -> np.ndarray:
    """``mask`` with only the largest connected component of each class (others set to 0, background).

    Args:
        mask: Integer label map (2D or 3D).
        classes: Classes to clean (default: every non-zero class present).
    """
    from skimage.measure import label

    out = mask.copy()
    todo = [int(c) for c in (np.unique(mask) if classes is None else classes) if int(c) != 0]
    for c in todo:
        comp = label(mask == c, connectivity=mask.ndim)  # (X, Y, Z) component ids, 0 = not class c
        if comp.max() <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        out[(comp > 0) & (comp != int(sizes.argmax()))] = 0
    return out


def apply_postprocess(mask: np.ndarray, mode: str, num_classes: Optional[int] = None) -> np.ndarray:
    """``lcc``: :func:`keep_largest_component` over classes ``1..num_classes-1``; ``none``: ``mask`` unchanged."""
    if mode == "none":
        return mask
    if mode != "lcc":
        raise ValueError(f"postprocess mode {mode!r}: expected lcc or none (auto is resolved before)")
    classes = range(1, num_classes) if num_classes else None
    return keep_largest_component(mask, classes)


def choose(none: Dict[str, Any], lcc: Dict[str, Any]) -> Tuple[str, str]:
    """``(better, reason)`` of two :func:`medvit.metrics.summarize` results: higher mean Dice wins; on a tie the
    lower mean HD95; on a full tie ``none`` (postprocessing must earn its place)."""
    d0, d1 = none.get("mean_dice"), lcc.get("mean_dice")
    h0, h1 = none.get("mean_hd95"), lcc.get("mean_hd95")
    if d0 is None or d1 is None:
        return "none", "no Dice to compare"
    if round(d1, 6) > round(d0, 6):
        return "lcc", f"mean Dice {d1:.4f} with vs {d0:.4f} without"
    if round(d1, 6) == round(d0, 6) and h0 is not None and h1 is not None and h1 < h0:
        return "lcc", f"equal mean Dice {d1:.4f}; mean HD95 {h1:.2f} mm with vs {h0:.2f} mm without"
    return "none", f"mean Dice {d0:.4f} without vs {d1:.4f} with"


def eval_dir_name(ensemble: bool = False) -> str:
    """``eval`` (one model) or ``eval-ensemble`` (several): the folder ``vtk seg eval`` writes into a run."""
    return "eval-ensemble" if ensemble else "eval"


def _choice_files(source, ensemble: bool = False) -> list:
    """Where ``vtk seg eval`` leaves its choice for a run folder or one of its checkpoint files."""
    if source is None:
        return []
    p, name = Path(str(source)), eval_dir_name(ensemble)
    if p.is_dir():
        return [p / name / CHOICE_FILE]
    return [p.parent / name / CHOICE_FILE, p.parent.parent / name / CHOICE_FILE]


def resolve_postprocess(mode: str, source=None, ensemble: bool = False) -> Tuple[str, str]:
    """``(lcc|none, why)``: ``auto`` reads the eval choice of the run ``source`` (its ``eval-ensemble`` choice for
    an ensemble whose first member is ``source``); ``none`` when there is none."""
    if mode != "auto":
        return mode, f"--postprocess {mode}"
    for f in _choice_files(source, ensemble):
        if f.is_file():
            try:
                better = json.loads(f.read_text()).get("better")
            except (OSError, ValueError):
                continue
            if better in ("lcc", "none"):
                return better, f"--postprocess auto: {better}, as chosen by vtk seg eval ({f})"
    return "none", "--postprocess auto: none (the run has no eval/postprocessing.json; run vtk seg eval first)"

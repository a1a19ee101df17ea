"""Validate a BTCV (or any decathlon-style) download and report every problem in one pass; the shared label check.

Checks each ``training``/``validation`` entry of ``dataset_0.json`` (and the ``test`` images): datalist schema
(a JSON list, integer entries, a missing ``"label"``, each with the entry's index), missing files, forged or
truncated headers (dimensions, voxel count against the cap and the file size, affine), unreadable or truncated
NIfTI, non-3D files, NaN voxels, image/label shape or affine mismatch and label values outside
``0..num_classes-1`` or not integers. Used by ``vtk data check btcv``.

:func:`label_problem` / :func:`check_label` are the one label check: ``vtk data check``, ``vtk seg train``
(:func:`medvit.task.preflight`, folder2d masks) and ``vtk seg eval`` call them, so a label file is accepted or
refused the same way everywhere. Float labels are refused, never rounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Optional, Tuple

import numpy as np

from engine.errors import UserError
from medvit.io import check_pair, read_nifti

__all__ = ["check_dataset", "Problem", "label_problem", "check_label", "check_mask", "label_spec"]

Problem = Tuple[str, str]  # (file, problem)
_SHOWN = 5  # bad label values listed in a message


def label_spec(data: Optional[str]) -> Tuple[Optional[Mapping[int, int]], Optional[int]]:
    """``(label_map, file_classes)`` of a ``--data`` kind: Synapse label files hold BTCV's 14 ids, mapped to 9."""
    from medvit.data.layouts import BTCV_LABELS, SYNAPSE_FROM_BTCV

    if data == "synapse":
        return SYNAPSE_FROM_BTCV, len(BTCV_LABELS)
    return None, None


def label_problem(data: np.ndarray, num_classes: int, label_map: Optional[Mapping[int, int]] = None,
                  file_classes: Optional[int] = None) -> Optional[str]:
    """Why ``data`` is not a label map of ``num_classes`` classes (background 0 included), or ``None``.

    Args:
        data: Label voxels, any shape and dtype.
        num_classes: Classes of the model (``--num-classes``).
        label_map: File id -> class id (BTCV -> Synapse); the file's ids must then lie in ``0..file_classes-1``
            and the mapped ids in ``0..num_classes-1``.
        file_classes: Ids the files hold when ``label_map`` is given (default ``num_classes``).
    """
    arr = np.asarray(data)
    k = int(file_classes or num_classes) if label_map is not None else int(num_classes)
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            return f"{int((~finite).sum())} NaN/inf label voxels"
        nonint = arr != np.rint(arr)
        if nonint.any():
            shown = ", ".join(f"{v:g}" for v in np.unique(arr[nonint])[:_SHOWN])
            return f"non-integer label values {shown} (labels are class ids 0..{k - 1}; they are not rounded)"
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        return f"label voxels of type {arr.dtype} (expected integer class ids)"
    if arr.size == 0:
        return "empty label volume"
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi >= k:
        bad = np.unique(arr[(arr < 0) | (arr >= k)])
        shown = ", ".join(f"{v:g}" for v in bad[:_SHOWN]) + (", ..." if bad.size > _SHOWN else "")
        return f"label values {shown} outside 0..{k - 1} ({k} classes incl. background; --num-classes)"
    if label_map is not None and label_map and max(label_map.values()) >= num_classes:
        return f"the label mapping gives class {max(label_map.values())}, outside 0..{num_classes - 1} " \
               f"(--num-classes {num_classes})"
    return None


def check_label(vol, num_classes: int, label_map: Optional[Mapping[int, int]] = None,
                file_classes: Optional[int] = None) -> np.ndarray:
    """The integer class ids (int64, same shape, not remapped) of a label ``NiftiVolume``; a ``UserError`` naming
    its file when :func:`label_problem` finds anything."""
    problem = label_problem(vol.data, num_classes, label_map, file_classes)
    if problem:
        raise UserError(f"{vol.path}: {problem}")
    return np.rint(vol.data).astype(np.int64)


def check_mask(path, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """``mask`` (a 2D folder's class ids, :func:`medvit.io.read_image2d`) unchanged, or a ``UserError`` naming
    ``path`` when :func:`label_problem` finds anything."""
    problem = label_problem(mask, num_classes)
    if problem:
        raise UserError(f"{path}: {problem}")
    return mask


def check_dataset(data_dir: Path, num_classes: int = 14, datalist: str = "dataset_0.json") -> Tuple[int, List[Problem]]:
    """Return ``(n_files_checked, problems)`` for the dataset under ``data_dir``; never raises for bad data."""
    from medvit.data.layouts import datalist_problems, read_datalist_json

    root = Path(data_dir)
    js = root / datalist
    try:
        meta = read_datalist_json(js)
    except UserError as e:
        return (0 if not js.is_file() else 1), [(str(js), str(e).split(": ", 1)[-1])]
    problems: List[Problem] = [(str(js), f"{where}: {err}") for where, err in datalist_problems(meta)]
    bad = {where for where, _ in datalist_problems(meta)}
    n = 1
    for split in ("training", "validation", "test"):
        entries = meta.get(split, [])
        if split in bad or not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if f"{split}[{i}]" in bad:
                continue
            if split == "test":
                n += 1
                img = entry if isinstance(entry, str) else entry["image"]
                problems += _read(root / img, "image")[1]
            else:
                n += 2
                problems += _check_entry(root, entry, num_classes)
    return n, problems


def _check_entry(root: Path, entry: dict, num_classes: int) -> List[Problem]:
    image, problems = _read(root / entry["image"], "image")
    label, lab_problems = _read(root / entry["label"], "label")
    problems += lab_problems
    if image is not None and label is not None:
        try:
            check_pair(image, label)
        except UserError as e:
            problems.append((str(label.path), str(e).split(": ", 1)[1]))
    if label is not None:
        problem = label_problem(label.data, num_classes)
        if problem:
            problems.append((str(label.path), problem))
    return problems


def _read(path: Path, kind: str):
    if not path.is_file():
        return None, [(str(path), f"{kind} file missing")]
    try:
        return read_nifti(path), []
    except UserError as e:
        return None, [(str(path), str(e).split(": ", 1)[-1])]
    except MemoryError:  # a header under the voxel cap that still does not fit in this machine's memory
        return None, [(str(path), "volume too large to load in memory")]

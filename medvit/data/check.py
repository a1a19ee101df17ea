"""Validate a BTCV (or any decathlon-style) download and report every problem in one pass.

Checks each ``training``/``validation`` entry of ``dataset_0.json`` (and the ``test`` images): missing files,
unreadable or truncated NIfTI, non-3D files, NaN voxels, image/label shape or affine mismatch and label values
outside ``0..num_classes-1`` (or not integers). Used by ``vtk data check btcv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

import numpy as np

from engine.errors import UserError
from medvit.io import check_pair, read_nifti

__all__ = ["check_dataset", "Problem"]

Problem = Tuple[str, str]  # (file, problem)


def check_dataset(data_dir: Path, num_classes: int = 14, datalist: str = "dataset_0.json") -> Tuple[int, List[Problem]]:
    """Return ``(n_files_checked, problems)`` for the dataset under ``data_dir``."""
    root = Path(data_dir)
    js = root / datalist
    if not js.is_file():
        return 0, [(str(js), "datalist not found")]
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError) as e:
        return 1, [(str(js), f"unreadable datalist ({' '.join(str(e).split())[:120]})")]
    problems: List[Problem] = []
    n = 1
    for split in ("training", "validation"):
        for entry in meta.get(split, []):
            n += 2
            problems += _check_entry(root, entry, num_classes)
    for entry in meta.get("test", []):
        n += 1
        img = entry if isinstance(entry, str) else entry.get("image", "")
        _, err = _read(root / img, "image")
        problems += err
    if not meta.get("training"):
        problems.append((str(js), "empty 'training' list"))
    return n, problems


def _check_entry(root: Path, entry: dict, num_classes: int) -> List[Problem]:
    if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
        return [(str(root / "dataset_0.json"), f"bad entry {entry!r} (needs 'image' and 'label')")]
    image, problems = _read(root / entry["image"], "image")
    label, lab_problems = _read(root / entry["label"], "label")
    problems += lab_problems
    if image is not None and label is not None:
        try:
            check_pair(image, label)
        except UserError as e:
            problems.append((str(label.path), str(e).split(": ", 1)[1]))
    if label is not None:
        values = np.unique(label.data)
        bad = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in bad[:5])
            problems.append((str(label.path), f"label values outside 0..{num_classes - 1}: {shown}"))
    return problems


def _read(path: Path, kind: str):
    if not path.is_file():
        return None, [(str(path), f"{kind} file missing")]
    try:
        return read_nifti(path), []
    except UserError as e:
        return None, [(str(path), str(e).split(": ", 1)[-1])]

"""Cross-validation folds as nnU-Net makes them: a deterministic K-fold split by case id.

nnU-Net v2 (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18, 2021) sorts the case identifiers and splits them with scikit-learn's
``KFold(n_splits=5, shuffle=True, random_state=12345)``; :func:`kfold_splits` reproduces that split exactly without
scikit-learn (``RandomState(12345).shuffle`` of the indices, the first ``n % k`` folds one case larger, each list
sorted), so a vtk fold and an nnU-Net fold hold the same cases. The split of a run is written to its folder as
``splits.json`` in nnU-Net's ``splits_final.json`` format (a list of ``{"train": [...], "val": [...]}``).

Example::

    >>> s = kfold_splits(["a", "b", "c", "d", "e"], 5)
    >>> sorted(sum((f["val"] for f in s), []))
    ['a', 'b', 'c', 'd', 'e']
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from engine.errors import UserError

__all__ = ["NNUNET_SEED", "case_id", "kfold_splits", "fold_items", "write_splits"]

NNUNET_SEED = 12345  # nnU-Net's ``generate_crossval_split(..., seed=12345)``
_NIFTI = re.compile(r"\.nii(\.gz)?$")


def case_id(item: dict) -> str:
    """A case's identifier: its ``case`` key (nnU-Net layout), else the label (or image) file name without suffix."""
    if item.get("case"):
        return str(item["case"])
    name = Path(item.get("label") or item["image"]).name
    return _NIFTI.sub("", name)


def kfold_splits(case_ids: Sequence[str], folds: int = 5, seed: int = NNUNET_SEED) -> List[Dict[str, List[str]]]:
    """``folds`` disjoint validation sets covering every case, with the complementary training sets.

    Identical to nnU-Net's ``generate_crossval_split`` (sklearn ``KFold(folds, shuffle=True, random_state=seed)``
    over the sorted identifiers).

    Raises:
        ValueError: Fewer cases than folds, fewer than 2 folds, or duplicated identifiers.
    """
    keys = sorted(str(c) for c in case_ids)
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicated case ids {dup[:5]}")
    if folds < 2 or len(keys) < folds:
        raise ValueError(f"cannot make {folds} folds from {len(keys)} cases (need 2 <= folds <= cases)")
    idx = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(idx)
    sizes = np.full(folds, len(keys) // folds)
    sizes[: len(keys) % folds] += 1
    out, start = [], 0
    for size in sizes:
        val = set(idx[start:start + size].tolist())
        start += size
        out.append({"train": [k for i, k in enumerate(keys) if i not in val],
                    "val": [k for i, k in enumerate(keys) if i in val]})
    return out


def fold_items(items: List[dict], folds: int, fold: int) -> Tuple[List[dict], List[dict], List[dict]]:
    """Training and validation items of ``fold`` (0-based) of a ``folds``-fold split of ``items``, and the split.

    Raises:
        UserError: ``--fold`` outside ``0..folds-1`` or too few cases (the message names the option).
    """
    if not 0 <= int(fold) < int(folds):
        raise UserError(f"--fold {fold}: must be in 0..{int(folds) - 1} for --folds {folds}")
    by_id = {}
    for item in items:
        cid = case_id(item)
        if cid in by_id:
            raise UserError(f"{item.get('label') or item['image']}: case id {cid!r} appears twice; --folds needs "
                            "unique case ids")
        by_id[cid] = item
    try:
        splits = kfold_splits(list(by_id), int(folds))
    except ValueError as e:
        raise UserError(f"--folds {folds}: {e}") from None
    chosen = splits[int(fold)]
    return [by_id[c] for c in chosen["train"]], [by_id[c] for c in chosen["val"]], splits


def write_splits(out, splits: List[Dict[str, List[str]]]) -> Path:
    """Write ``splits.json`` (nnU-Net's ``splits_final.json`` format) into the run folder ``out``; the fold used
    is recorded in the run's ``config.yaml`` (``data_args.fold``)."""
    from engine.io import atomic_write_json

    path = Path(out) / "splits.json"
    atomic_write_json(path, splits)
    return path

"""Dataset fingerprint as nnU-Net computes it, and the training settings it suggests (``vtk data fingerprint``).

nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18, 2021) plans its training from a fingerprint of the data: the voxel spacing and
size of every case, and the intensity statistics of the foreground (the voxels inside the labels) per channel.
From it :func:`dataset_fingerprint` suggests

* the target spacing: the median spacing; when the data are anisotropic (the median's coarsest spacing more than
  3x the others' largest, and the median size along that axis times 3 below the others' smallest) the coarse axis
  takes the 10th percentile of its spacings (at least the others' largest), nnU-Net's rule;
* the ROI: the median size at the target spacing, rounded down to a multiple of 16 per axis and capped at 128
  (nnU-Net shrinks its patch from the median size to fit GPU memory; vtk models take a cubic ROI, so
  ``roi_edge`` is the smallest of those, at least 32);
* the normalisation: ``ct`` / ``mr`` from the modality (``dataset.json``), else ``ct`` when the intensities look
  like Hounsfield units (foreground 0.5 percentile below -200), otherwise ``mr``.

Spacings and sizes are given in RAS axis order (x, y, z), the order vtk trains in. Foreground statistics use at
most ``max_voxels`` randomly drawn foreground voxels per case (seed 1234, as nnU-Net's 10,000-voxel sampling; all
of them when there are fewer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from engine.errors import UserError

__all__ = ["detect_kind", "dataset_items", "dataset_modality", "case_fingerprint", "dataset_fingerprint",
           "foreground_intensities", "ANISOTROPY"]

ANISOTROPY = 3.0  # nnU-Net's threshold on (coarsest / finest) median spacing
_ROI_CAP, _ROI_MIN, _ROI_STEP = 128, 32, 16


def detect_kind(root: os.PathLike) -> str:
    """``nnunet`` (nnU-Net v2 ``dataset.json``), ``decathlon`` (a datalist json) or ``folder``."""
    from medvit.data.nnunet import is_nnunet_dir

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data directory not found")
    if is_nnunet_dir(root):
        return "nnunet"
    if (root / "dataset_0.json").is_file() or len(list(root.glob("*.json"))) == 1:
        return "decathlon"
    return "folder"


def dataset_items(kind: str, root: os.PathLike) -> List[dict]:
    """Every labelled case of the dataset (training and validation lists together)."""
    from medvit.data.layouts import resolve_splits

    train, val = resolve_splits(kind, root)
    seen, items = set(), []
    for item in train + val:
        if item["image"] not in seen:
            seen.add(item["image"])
            items.append(item)
    return items


def dataset_modality(kind: str, root: os.PathLike) -> Optional[str]:
    """The modality the dataset declares: nnU-Net ``channel_names["0"]``, decathlon ``modality["0"]``."""
    root = Path(root)
    if kind == "nnunet":
        from medvit.data.nnunet import nnunet_modality

        return nnunet_modality(root)
    cands = [root / "dataset_0.json"] if (root / "dataset_0.json").is_file() else sorted(root.glob("*.json"))
    if len(cands) != 1:
        return None
    try:
        meta = json.loads(cands[0].read_text())
    except (OSError, ValueError):
        return None
    mod = meta.get("modality") if isinstance(meta, dict) else None
    if isinstance(mod, dict) and mod:
        return str(mod.get("0", next(iter(mod.values()))))
    return str(mod) if isinstance(mod, str) else None


def _ras(vol) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, spacing, shape) of a volume in RAS axis order (exact permutation/flip)."""
    from medvit.data.transforms import to_ras

    data, ornt = to_ras(vol.data, vol.affine)
    perm = np.argsort(ornt[:, 0].astype(int))  # RAS axis i comes from array axis perm[i]
    spacing = np.asarray(vol.spacing, np.float64)[perm]
    return data, spacing, np.asarray(data.shape)


def foreground_intensities(image: np.ndarray, label: np.ndarray, max_voxels: Optional[int] = 100_000,
                           seed: int = 1234) -> np.ndarray:
    """Image values where ``label > 0`` (float64); at most ``max_voxels`` of them, drawn without replacement."""
    values = np.asarray(image, np.float64)[np.asarray(label) > 0]
    if max_voxels is not None and values.size > max_voxels:
        values = np.random.default_rng(seed).choice(values, int(max_voxels), replace=False)
    return values


def case_fingerprint(item: dict, max_voxels: Optional[int] = 100_000,
                     label_map: Optional[dict] = None) -> Tuple[Dict[str, Any], np.ndarray]:
    """Spacing, shape and foreground statistics of one case, and its sampled foreground values."""
    from medvit.data.layouts import remap_labels
    from medvit.data.transforms import foreground_stats
    from medvit.io import check_pair, read_nifti

    img = read_nifti(item["image"])
    data, spacing, shape = _ras(img)
    out: Dict[str, Any] = {"image": str(item["image"]), "spacing": spacing.tolist(), "shape": shape.tolist()}
    values = np.zeros((0,))
    if "label" in item:
        lab = read_nifti(item["label"])
        check_pair(img, lab)
        y = np.rint(_ras(lab)[0]).astype(np.int64)
        if label_map is not None:
            y = remap_labels(y, label_map)
        values = foreground_intensities(data, y, max_voxels)
        out["foreground_voxels"] = int((y > 0).sum())
        out["intensity"] = foreground_stats(values) if values.size else None
    return out, values


def _target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> Tuple[List[float], bool]:
    """nnU-Net's ``determine_fullres_target_spacing``."""
    target = np.median(spacings, axis=0)
    size = np.median(shapes, axis=0)
    coarse = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != coarse]
    aniso = bool(target[coarse] > ANISOTROPY * max(target[others])
                 and size[coarse] * ANISOTROPY < min(size[others]))
    if aniso:
        target[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), float(max(target[others])))
    return [float(v) for v in target], aniso


def _suggest_normalization(modality: Optional[str], stats: Optional[Dict[str, float]]) -> Tuple[str, str]:
    from medvit.data.transforms import resolve_normalization

    scheme = resolve_normalization("auto", modality)
    if scheme != "window":
        return scheme, f"modality {modality!r}"
    if stats is None:
        return "mr", "no modality and no foreground; z-score per image"
    if stats["percentile_00_5"] < -200:
        return "ct", f"no modality; foreground 0.5 percentile {stats['percentile_00_5']:.0f} looks like HU"
    return "mr", "no modality; intensities are not HU-like"


def dataset_fingerprint(root: os.PathLike, kind: Optional[str] = None,
                        max_voxels: Optional[int] = 100_000) -> Dict[str, Any]:
    """Fingerprint of the labelled cases under ``root`` and the suggested spacing, ROI and normalisation.

    Returns a JSON-ready dict: ``cases`` (per case), ``spacing`` / ``shape`` (median, min, max per axis),
    ``intensity`` (foreground statistics over all cases), ``suggested`` (``spacing``, ``roi``, ``roi_edge``,
    ``normalization`` + ``reason``, ``anisotropic``).
    """
    from medvit.data.layouts import SYNAPSE_FROM_BTCV
    from medvit.data.transforms import foreground_stats

    kind = kind or detect_kind(root)
    items = dataset_items(kind, root)
    label_map = SYNAPSE_FROM_BTCV if kind == "synapse" else None
    cases, values = [], []
    for item in items:
        c, v = case_fingerprint(item, max_voxels, label_map)
        cases.append(c)
        values.append(v)
    spacings = np.array([c["spacing"] for c in cases])
    shapes = np.array([c["shape"] for c in cases], np.float64)
    allv = np.concatenate(values) if values else np.zeros((0,))
    stats = foreground_stats(allv) if allv.size else None
    target, aniso = _target_spacing(spacings, shapes)
    size_at_target = np.median(shapes * spacings / np.asarray(target), axis=0)
    roi = [int(min(_ROI_CAP, max(_ROI_STEP, _ROI_STEP * (s // _ROI_STEP)))) for s in size_at_target]
    modality = dataset_modality(kind, root)
    norm, reason = _suggest_normalization(modality, stats)
    return {
        "data": str(Path(root)), "kind": kind, "modality": modality, "num_cases": len(cases),
        "axis_order": "RAS (x, y, z)",
        "spacing": _summary(spacings), "shape": _summary(shapes), "intensity": stats,
        "suggested": {"spacing": target, "anisotropic": aniso, "median_shape_at_spacing":
                      [float(v) for v in size_at_target], "roi": roi, "roi_edge": max(_ROI_MIN, min(roi)),
                      "normalization": norm, "reason": reason},
        "cases": cases,
    }


def _summary(a: np.ndarray) -> Dict[str, List[float]]:
    return {"median": np.median(a, 0).tolist(), "min": a.min(0).tolist(), "max": a.max(0).tolist()}

"""Per-organ segmentation metrics in physical units: Dice, HD95 (mm) and NSD (normalised surface Dice).

Conventions (documented in docs/medvit.md; TransUNet's ``calculate_metric_percase``, Chen et al.,
arXiv:2102.04306, scores a false positive on an empty ground truth as Dice 1, and a miss as HD 0):

* both ground truth and prediction empty -> the organ is **not counted** for that case (NaN; means skip it);
* ground truth empty, prediction not (or the reverse) -> Dice 0, NSD 0, HD95 = the image diagonal in mm
  (the largest distance possible in that grid, a finite worst-case penalty);
* HD95 is MONAI's definition: ``max(p95(d(pred -> gt)), p95(d(gt -> pred)))`` over surface voxels, with
  distances in millimetres from the voxel spacing (anisotropic spacing is honoured);
* NSD (Nikolov et al., "Clinically applicable segmentation of head and neck anatomy for radiotherapy",
  arXiv:1809.04430) is the fraction of both surfaces within ``tolerance_mm`` of the other surface.

Surfaces are the voxels of a mask that touch the background (6-connectivity erosion), as in MONAI's
``get_mask_edges``.

Object-level metrics for 2D gland/nucleus images (the GlaS challenge, Sirinukunwattana et al., "Gland
segmentation in colon histology images: The GlaS challenge contest", Medical Image Analysis 2017, as MedT and
TransUNet's 2D users report them): objects are the connected components (``skimage.measure.label``, 8-connected)
of each class; :func:`object_f1` counts a predicted object as a true positive when it covers at least half of
the ground-truth object it overlaps most (each ground-truth object matched once); :func:`object_dice` is GlaS's
area-weighted mean of each object's Dice with its best-overlapping counterpart, taken both ways.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

__all__ = ["dice", "hd95", "nsd", "surface_distances", "case_metrics", "summarize", "write_reports", "save_dice_bar",
           "object_f1", "object_dice", "object_metrics", "METRIC_KEYS", "OBJECT_KEYS"]

METRIC_KEYS = ("dice", "hd95", "nsd")
OBJECT_KEYS = ("object_f1", "object_dice")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    p, g = pred.astype(bool), gt.astype(bool)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int((p & g).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b`` (both non-empty)."""
    from scipy.ndimage import distance_transform_edt

    sa, sb = _surface(a.astype(bool)), _surface(b.astype(bool))
    dist_to_b = distance_transform_edt(~sb, sampling=tuple(float(s) for s in spacing))
    return dist_to_b[sa]


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (see the module conventions for empty masks)."""
    p, g = pred.astype(bool), gt.astype(bool)
    if not p.any() and not g.any():
        return float("nan")
    if not p.any() or not g.any():
        return _diagonal(p.shape, spacing)
    d_pg = surface_distances(p, g, spacing)
    d_gp = surface_distances(g, p, spacing)
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice at ``tolerance_mm``: NaN if both empty, 0 if exactly one is empty."""
    p, g = pred.astype(bool), gt.astype(bool)
    if not p.any() and not g.any():
        return float("nan")
    if not p.any() or not g.any():
        return 0.0
    d_pg = surface_distances(p, g, spacing)
    d_gp = surface_distances(g, p, spacing)
    return float(((d_pg <= tolerance_mm).sum() + (d_gp <= tolerance_mm).sum()) / (d_pg.size + d_gp.size))


def case_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing: Sequence[float],
                 tolerance_mm: float = 2.0, surface: bool = True) -> Dict[str, np.ndarray]:
    """Per-class metrics of one case for classes ``1..num_classes-1``.

    Args:
        pred: Integer label map, same shape as ``gt``.
        gt: Integer ground-truth label map.
        num_classes: Number of classes including background.
        spacing: Voxel size in mm per array axis.
        tolerance_mm: NSD tolerance.
        surface: Also compute HD95 and NSD (slower than Dice).

    Returns:
        ``{"dice": (K,), "hd95": (K,), "nsd": (K,)}`` with K = num_classes - 1 and NaN where not counted.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    out = {k: np.full(num_classes - 1, np.nan) for k in ("dice", "hd95", "nsd")}
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        out["dice"][c - 1] = dice(p, g)
        if surface:
            out["hd95"][c - 1] = hd95(p, g, spacing)
            out["nsd"][c - 1] = nsd(p, g, spacing, tolerance_mm)
    return out


def _objects(mask: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    return label(mask.astype(bool), connectivity=mask.ndim)


def _overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(na + 1, nb + 1) pixel counts of every pair of component ids (0 = background)."""
    na, nb = int(a.max()), int(b.max())
    return np.bincount(a.ravel().astype(np.int64) * (nb + 1) + b.ravel(), minlength=(na + 1) * (nb + 1)).reshape(
        na + 1, nb + 1)


def object_f1(pred: np.ndarray, gt: np.ndarray) -> float:
    """GlaS object F1 of two binary masks (see the module docstring); NaN when both have no object."""
    p, g = _objects(pred), _objects(gt)
    n_p, n_g = int(p.max()), int(g.max())
    if n_p == 0 and n_g == 0:
        return float("nan")
    ov = _overlaps(p, g)[1:, 1:]  # (n_p, n_g)
    g_area = np.bincount(g.ravel(), minlength=n_g + 1)[1:]
    matched, tp = set(), 0
    for i in range(n_p):
        if n_g == 0 or ov[i].max() == 0:
            continue
        j = int(ov[i].argmax())
        if j not in matched and ov[i, j] >= 0.5 * g_area[j]:
            matched.add(j)
            tp += 1
    fp, fn = n_p - tp, n_g - tp
    return 2.0 * tp / (2 * tp + fp + fn)


def object_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """GlaS object Dice: 0.5 * (sum_i w_i Dice(G_i, S*(G_i)) + sum_j v_j Dice(S_j, G*(S_j))), with w, v the
    objects' area fractions and ``*`` the best-overlapping object of the other mask (none: Dice 0)."""
    p, g = _objects(pred), _objects(gt)
    n_p, n_g = int(p.max()), int(g.max())
    if n_p == 0 and n_g == 0:
        return float("nan")
    if n_p == 0 or n_g == 0:
        return 0.0
    ov = _overlaps(p, g)[1:, 1:]
    pa, ga = np.bincount(p.ravel(), minlength=n_p + 1)[1:], np.bincount(g.ravel(), minlength=n_g + 1)[1:]

    def side(ov_rows, own, other):  # each object (row) against its best-overlapping counterpart (column)
        best = ov_rows.argmax(1)
        inter = ov_rows[np.arange(len(best)), best]
        d = np.where(inter > 0, 2.0 * inter / (own + other[best]), 0.0)
        return float((own / own.sum() * d).sum())

    return 0.5 * (side(ov.T, ga, pa) + side(ov, pa, ga))


def object_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> Dict[str, np.ndarray]:
    """``{"object_f1": (K,), "object_dice": (K,)}`` for classes ``1..num_classes-1`` of 2D label maps."""
    out = {k: np.full(num_classes - 1, np.nan) for k in OBJECT_KEYS}
    for c in range(1, num_classes):
        out["object_f1"][c - 1] = object_f1(pred == c, gt == c)
        out["object_dice"][c - 1] = object_dice(pred == c, gt == c)
    return out


def summarize(per_case: Sequence[Dict[str, np.ndarray]], names: Sequence[str]) -> Dict[str, object]:
    """Mean over cases per organ (NaN entries skipped), then the mean over organs that were counted (Dice, HD95,
    NSD, and the object metrics when the cases have them)."""
    summary: Dict[str, object] = {"per_organ": {}}
    extra = [k for k in OBJECT_KEYS if per_case and k in per_case[0]]
    for key in (*METRIC_KEYS, *extra):
        stack = np.stack([c[key] for c in per_case])  # (cases, K)
        counted = ~np.isnan(stack)
        sums = np.where(counted, stack, 0.0).sum(0)
        n = counted.sum(0)
        organ = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
        for name, v, k in zip(names, organ, n):
            summary["per_organ"].setdefault(name, {})[key] = None if np.isnan(v) else float(v)
            if key == "dice":
                summary["per_organ"][name]["cases"] = int(k)
        summary[f"mean_{key}"] = float(np.nanmean(organ)) if np.any(n > 0) else None
    return summary


def write_reports(out_dir, rows: Sequence[Dict[str, object]], summary: Dict[str, object], names: Sequence[str]):
    """Write ``metrics.json``, ``per_case.csv`` (one row per case and organ) and ``dice_per_organ.png``."""
    import csv
    import io
    from pathlib import Path

    from engine.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    atomic_write_json(out / "metrics.json", summary, indent=2)
    buf = io.StringIO()
    writer = csv.writer(buf)
    extra = [k for k in OBJECT_KEYS if rows and k in rows[0]]
    writer.writerow(["case", "organ", "dice", "hd95_mm", "nsd", *extra])
    for r in rows:
        for i, name in enumerate(names):
            writer.writerow([r["case"], name] + [_fmt(r[k][i]) for k in (*METRIC_KEYS, *extra)])
    atomic_write_text(out / "per_case.csv", buf.getvalue())
    save_dice_bar(out / "dice_per_organ.png", summary, names)
    return out


def save_dice_bar(path, summary: Dict[str, object], names: Sequence[str]) -> None:
    """Bar chart of the mean Dice per organ (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.io import atomic_savefig

    values = [summary["per_organ"][n]["dice"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 4))
    ax.bar(range(len(names)), [0.0 if v is None else v for v in values], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    mean = summary.get("mean_dice")
    ax.set_title(f"mean Dice {mean:.3f}" if mean is not None else "mean Dice n/a")
    fig.tight_layout()
    try:
        atomic_savefig(fig, path)
    finally:
        plt.close(fig)


def _fmt(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.4f}"

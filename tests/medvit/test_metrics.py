"""Metrics against hand-computed values: Dice, HD95 in mm with anisotropic spacing, NSD, empty conventions."""

import math

import numpy as np
import pytest

from medvit.metrics import case_metrics, dice, hd95, nsd, summarize


def _vox(shape, *coords):
    m = np.zeros(shape, bool)
    for c in coords:
        m[c] = True
    return m


def test_dice_hand_computed():
    gt = _vox((4, 4, 4), (1, 1, 1), (1, 1, 2))
    pred = _vox((4, 4, 4), (1, 1, 2), (2, 2, 2), (3, 3, 3))
    assert dice(pred, gt) == pytest.approx(2 * 1 / 5)


def test_empty_conventions():
    empty = np.zeros((5, 5, 5), bool)
    blob = _vox((5, 5, 5), (2, 2, 2))
    spacing = (1.0, 2.0, 3.0)
    diag = math.sqrt(5**2 + 10**2 + 15**2)
    assert math.isnan(dice(empty, empty)) and math.isnan(hd95(empty, empty, spacing))
    assert math.isnan(nsd(empty, empty, spacing))
    # a false positive on an empty ground truth is Dice 0 (TransUNet scores it 1), NSD 0, HD95 = diagonal
    assert dice(blob, empty) == 0.0 and nsd(blob, empty, spacing) == 0.0
    assert hd95(blob, empty, spacing) == pytest.approx(diag)
    assert dice(empty, blob) == 0.0 and hd95(empty, blob, spacing) == pytest.approx(diag)


def test_hd95_and_nsd_in_mm_with_anisotropic_spacing():
    gt = _vox((6, 6, 6), (2, 2, 1))
    pred = _vox((6, 6, 6), (2, 2, 4))  # 3 slices apart along z
    spacing = (0.8, 0.8, 3.0)
    assert hd95(pred, gt, spacing) == pytest.approx(9.0)
    pred_x = _vox((6, 6, 6), (5, 2, 1))  # 3 voxels apart along x
    assert hd95(pred_x, gt, spacing) == pytest.approx(2.4)
    assert nsd(pred_x, gt, spacing, tolerance_mm=2.0) == 0.0
    assert nsd(pred_x, gt, spacing, tolerance_mm=2.5) == 1.0


def test_hd95_matches_monai_on_random_blobs():
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(0)
    zz, yy, xx = np.indices((20, 18, 16))
    gt = (zz - 9) ** 2 + (yy - 8) ** 2 + (xx - 7) ** 2 < 30
    pred = ((zz - 10) ** 2 + (yy - 9) ** 2 + (xx - 7) ** 2 < 26) | (rng.random(gt.shape) > 0.995)
    spacing = (0.7, 0.9, 2.5)
    ref = compute_hausdorff_distance(pred[None, None], gt[None, None], percentile=95, spacing=spacing)
    assert hd95(pred, gt, spacing) == pytest.approx(float(ref), rel=1e-5)


def test_case_metrics_and_summary_skip_both_empty():
    gt = np.zeros((4, 4, 4), np.int64)
    gt[1, 1, 1] = 1
    pred = gt.copy()
    per_case = [case_metrics(pred, gt, 3, (1, 1, 1)), case_metrics(pred * 0, gt, 3, (1, 1, 1))]
    assert per_case[0]["dice"][0] == 1.0 and math.isnan(per_case[0]["dice"][1])
    summary = summarize(per_case, ["a", "b"])
    assert summary["per_organ"]["a"]["dice"] == pytest.approx(0.5)
    assert summary["per_organ"]["b"]["dice"] is None and summary["per_organ"]["b"]["cases"] == 0
    assert summary["mean_dice"] == pytest.approx(0.5)  # organ b is not counted

"""HD95 / NSD speed and agreement: ``medvit.metrics`` vs MONAI, side by side in one run.

MONAI's ``compute_hausdorff_distance(percentile=95, spacing=...)`` is the reference (same definition:
``max(p95(d(pred -> gt)), p95(d(gt -> pred)))`` over 6-connected surface voxels, distances in mm).

Usage::

    python benchmarks/seg_metrics.py --size 128 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

__all__ = ["main"]


def _blobs(size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices((size, size, size // 2))
    c = size / 2
    gt = (zz - c) ** 2 + (yy - c) ** 2 + (2 * xx - c) ** 2 < (size / 3) ** 2
    pred = (zz - c - 2) ** 2 + (yy - c + 1) ** 2 + (2 * xx - c) ** 2 < (size / 3.2) ** 2
    pred |= rng.random(gt.shape) > 0.9995
    return pred, gt


def _time(fn, repeats: int) -> tuple:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> None:
    from monai.metrics import compute_hausdorff_distance

    from medvit.metrics import hd95

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    pred, gt = _blobs(args.size)
    spacing = (0.8, 0.8, 3.0)
    t_ours, ours = _time(lambda: hd95(pred, gt, spacing), args.repeats)
    t_ref, ref = _time(lambda: float(compute_hausdorff_distance(pred[None, None], gt[None, None], percentile=95,
                                                                spacing=spacing)), args.repeats)
    print(f"volume {pred.shape}, spacing {spacing} mm")
    print(f"medvit hd95 {ours:.4f} mm in {t_ours * 1e3:.1f} ms; MONAI {ref:.4f} mm in {t_ref * 1e3:.1f} ms; "
          f"speed ratio (MONAI time / medvit time) {t_ref / t_ours:.2f}x; |difference| {abs(ours - ref):.2e} mm")


if __name__ == "__main__":
    main()

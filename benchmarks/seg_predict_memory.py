"""Peak memory of predicting one large CT (512 x 512 x 300) with the memory-bounded sliding window, stitched on the CPU.

A tiny UNETR (random weights: memory does not depend on them) predicts a synthetic CT of BTCV's geometry
(0.8 x 0.8 x 1.5 mm voxels, LPS-like axes) resampled to the UNETR BTCV spacing (1.5 x 1.5 x 2.0 mm) with 14
classes, through :class:`medvit.inference.Predictor` with ``stitch="cpu"``. Printed: the estimate
(:func:`medvit.inference.estimate_memory`, what ``vtk seg predict`` prints before starting), the measured peak
resident memory of the process (``ru_maxrss``) and the resident memory before predicting (the volume and model).

Usage::

    nice python benchmarks/seg_predict_memory.py                       # 512 x 512 x 300, no TTA
    nice python benchmarks/seg_predict_memory.py --size 256 --slices 120 --tta --probabilities
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

__all__ = ["main"]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2 ** 20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv=None) -> None:
    import torch

    import medvit
    from medvit.inference import Predictor
    from medvit.io import NiftiVolume

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="In-plane voxels.")
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--sw-batch-size", type=int, default=4)
    ap.add_argument("--classes", type=int, default=14)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--probabilities", action="store_true", help="Also keep the probabilities in the input grid.")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = medvit.create_model("unetr", in_chans=1, num_classes=args.classes, img_size=args.roi, feature_size=8,
                                embed_dim=96, depth=4, num_heads=4, patch_size=16).eval()
    n = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    shape = (args.size, args.size, args.slices)
    data = (rng.standard_normal(shape, dtype=np.float32) * 200.0).astype(np.float32)  # as read_nifti returns it
    affine = np.diag([-0.8 * 512 / args.size, -0.8 * 512 / args.size, 1.5, 1.0])
    vol = NiftiVolume(None, data, affine, None)
    pred = Predictor.from_model(model, spatial_dims=3, roi=[args.roi] * 3, num_classes=args.classes,
                                spacing=(1.5, 1.5, 2.0), a_min=-175.0, a_max=250.0, overlap=args.overlap,
                                sw_batch_size=args.sw_batch_size, tta=args.tta, stitch="cpu")
    plans, windows = [], []
    before = _rss_mib()
    t = time.perf_counter()
    from medvit.inference import segment_volume

    out = segment_volume(pred.members, vol, pred.settings, num_classes=args.classes, probabilities=args.probabilities,
                         on_plan=plans.append, on_start=windows.append)
    wall = time.perf_counter() - t
    peak = _peak_mib()
    print(f"input {'x'.join(map(str, shape))} float32 ({data.nbytes / 2 ** 20:.0f} MiB), tiny UNETR {n / 1e6:.2f}M "
          f"parameters, roi {args.roi}, overlap {args.overlap}, {args.classes} classes, tta {args.tta}, "
          f"probabilities {args.probabilities}")
    print(f"{plans[0].describe()}; {windows[0]} windows")
    print(f"resident before predicting {before:.0f} MiB; measured peak {peak:.0f} MiB (increase {peak - before:.0f} "
          f"MiB); estimate {plans[0].host / 2 ** 20:.0f} MiB; {wall:.1f} s; mask {out.mask.shape} {out.mask.dtype}")


if __name__ == "__main__":
    main()

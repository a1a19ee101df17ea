"""Clip-loading throughput: vtk's decord map-style dataset vs pytorchvideo's ``Kinetics`` with ``decoder="pyav"``.

Both read the same H.264 mp4 files (Kinetics-like: 340x256, 10 s at 30 fps, x264 defaults, no audio) listed in one
pytorchvideo ``path label`` csv, sample one random clip of ``--num-frames`` frames every ``--stride`` frames per
video, and return a normalised float ``(C, T, 224, 224)`` clip (short side -> 224, centre crop). Each side uses its
own library's standard transforms: vtk's ``eval_transform`` (torchvision v2 on uint8, float at the end) and
pytorchvideo's tutorial pipeline (``UniformTemporalSubsample``, ``ShortSideScale``, ``CenterCropVideo``,
``Normalize`` on the float clip its decoder returns). Both run in a DataLoader with the same workers and batch size;
the first batch (worker start-up) is excluded from both timings.

    python benchmarks/video_loader.py --videos 12 --repeats 8 --workers 2

Prints clips/s for both and the ratio (vtk / pytorchvideo).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videovit.data.layouts import load_csv  # noqa: E402
from videovit.data.dataset import VideoClipDataset  # noqa: E402
from videovit.data.synth import write_video  # noqa: E402
from videovit.data.transforms import eval_transform  # noqa: E402
from videovit.compat import import_pytorchvideo_transforms  # noqa: E402

__all__ = ["make_videos", "bench_vtk", "bench_pytorchvideo", "main"]



def make_videos(folder: Path, n: int, frames: int = 300, fps: int = 30, seed: int = 0) -> Path:
    """Write ``n`` textured moving videos (340x256) and a ``train.csv``; reuses files that exist."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        path = folder / f"video_{i:03d}.mp4"
        if not path.exists():
            tex = rng.integers(0, 256, (64, 86, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # (512, 688, 3)
            vx, vy = rng.uniform(-3, 3, 2)
            video = np.stack([np.roll(tex, (int(vy * t), int(vx * t)), (0, 1))[:256, :340] for t in range(frames)])
            write_video(path, video, fps=fps)
        lines.append(f"{path.name} {i % 4}\n")
    (folder / "train.csv").write_text("".join(lines))
    return folder / "train.csv"


def _vtk_transform(frames: np.ndarray) -> torch.Tensor:
    return _vtk_transform.fn(frames)[0]  # (1, C, T, 224, 224) -> (C, T, 224, 224)


def _ptv_transform(num_frames: int):
    T = import_pytorchvideo_transforms()
    from torchvision.transforms import Compose

    video = Compose([T.UniformTemporalSubsample(num_frames), T.ShortSideScale(224), T.Div255(),
                     T.Normalize((0.45, 0.45, 0.45), (0.225, 0.225, 0.225))])
    crop = __import__("pytorchvideo.transforms.functional", fromlist=["x"]).uniform_crop
    return T.ApplyTransformToKey("video", Compose([video, lambda v: crop(v, 224, 1)]))


def _time_loader(loader, label: str) -> float:
    it = iter(loader)
    next(it)  # worker start-up, excluded
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += (batch[0] if isinstance(batch, (list, tuple)) else batch["video"]).shape[0]
    dt = time.perf_counter() - t0
    print(f"{label:>14}: {n} clips in {dt:.2f} s = {n / dt:.2f} clips/s")
    return n / dt


def bench_vtk(csv: Path, num_frames: int, stride: int, workers: int, batch: int, repeats: int) -> float:
    _vtk_transform.fn = eval_transform(224, 1)
    videos = load_csv(csv.parent, csv_path=csv)
    videos.samples = videos.samples * repeats
    ds = VideoClipDataset(videos, num_frames, stride, transform=_vtk_transform, backend="decord")
    return _time_loader(DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True), "vtk (decord)")


def bench_pytorchvideo(csv: Path, num_frames: int, stride: int, workers: int, batch: int, repeats: int,
                       fps: int) -> float:
    from pytorchvideo.data import Kinetics, make_clip_sampler

    rows = csv.read_text() * repeats
    rep_csv = csv.with_name("train_repeated.csv")
    rep_csv.write_text(rows)
    duration = ((num_frames - 1) * stride + 1) / fps
    ds = Kinetics(str(rep_csv), make_clip_sampler("random", duration), video_path_prefix=str(csv.parent),
                  transform=_ptv_transform(num_frames), decode_audio=False, decoder="pyav")
    loader = DataLoader(ds, batch_size=batch, num_workers=workers)
    return _time_loader(loader, "pytorchvideo")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/vtk-bench-videos"))
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--video-frames", type=int, default=300, help="Frames per generated video (10 s at 30 fps).")
    p.add_argument("--rounds", type=int, default=2, help="Alternating rounds; the median ratio is reported.")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    span = (a.num_frames - 1) * a.stride + 1
    counts = (a.videos, a.repeats, a.workers + 1, a.batch_size, a.rounds, a.num_frames, a.stride)
    if min(counts) < 1 or a.video_frames < span or a.videos * a.repeats <= a.batch_size:
        raise SystemExit(f"video_loader: bad arguments (counts must be >= 1, workers >= 0, --video-frames "
                         f"{a.video_frames} >= the clip span {span}, and videos x repeats > one batch, since the "
                         f"first batch is not timed)")
    csv = make_videos(a.dir / f"{a.video_frames}f", a.videos, frames=a.video_frames, fps=a.fps)
    print(f"{a.videos} videos x {a.repeats} repeats, clip {a.num_frames}x{a.stride}, workers {a.workers}, "
          f"batch {a.batch_size}")
    ratios = []
    for r in range(a.rounds):
        ptv = bench_pytorchvideo(csv, a.num_frames, a.stride, a.workers, a.batch_size, a.repeats, a.fps)
        ours = bench_vtk(csv, a.num_frames, a.stride, a.workers, a.batch_size, a.repeats)
        ratios.append(ours / ptv)
        print(f"round {r + 1}: ratio {ratios[-1]:.2f}x")
    print(f"ratio vtk / pytorchvideo (median of {a.rounds}): {float(np.median(ratios)):.2f}x "
          f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    main()

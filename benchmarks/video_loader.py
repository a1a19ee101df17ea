"""Clip-loading throughput: vtk's map-style dataset (decord, and PyAV ``seek``) vs pytorchvideo's ``Kinetics`` with
``decoder="pyav"`` and ``decoder="decord"``, for every clip recipe given (default TimeSformer's 8x32 and MViT's 16x4).

Both read the same H.264 mp4 files (Kinetics-like: 340x256, 10 s at 30 fps, x264 defaults, no audio) listed in one
pytorchvideo ``path label`` csv, sample one random clip of ``--num-frames`` frames every ``--stride`` frames per
video, and return a normalised float ``(C, T, 224, 224)`` clip (short side -> 224, centre crop). Each side uses its
own library's standard transforms: vtk's ``eval_transform`` (torchvision v2 on uint8, float at the end) and
pytorchvideo's tutorial pipeline (``UniformTemporalSubsample``, ``ShortSideScale``, ``CenterCropVideo``,
``Normalize`` on the float clip its decoder returns). Both run in a DataLoader with the same workers and batch size;
the first batch (worker start-up) is excluded from both timings.

vtk's ``seek`` backend (:class:`videovit.data.decode.SeekReader`, what ``backend="auto"``, the default, uses) seeks
to the keyframe before the clip, decodes forward only to its last frame, skips the non-reference frames the clip does
not use, converts only the clip's frames (one reused single-threaded swscale context), and keeps each worker's
readers (timestamp index and open file) for the next clip of the same video. ``decord`` is vtk's fallback backend.

    python -m benchmarks.video_loader --videos 12 --repeats 8 --workers 2 --clips 8x32,16x4

Prints clips/s of the four loaders per recipe, each vtk loader's ratio to pytorchvideo with PyAV and with decord,
and a markdown table of the medians. ``--profile`` prints instead the CPU time per clip of each stage (open, seek and
decode, RGB, resize, crop, normalise, collate) of vtk and pytorchvideo in one process, on the same clips.
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


def bench_vtk(csv: Path, num_frames: int, stride: int, workers: int, batch: int, repeats: int,
              backend: str = "decord") -> float:
    _vtk_transform.fn = eval_transform(224, 1)
    videos = load_csv(csv.parent, csv_path=csv)
    videos.samples = videos.samples * repeats
    ds = VideoClipDataset(videos, num_frames, stride, transform=_vtk_transform, backend=backend)
    return _time_loader(DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True), f"vtk ({backend})")


def bench_pytorchvideo(csv: Path, num_frames: int, stride: int, workers: int, batch: int, repeats: int,
                       fps: int, decoder: str = "pyav") -> float:
    from pytorchvideo.data import Kinetics, make_clip_sampler

    rows = csv.read_text() * repeats
    rep_csv = csv.with_name("train_repeated.csv")
    rep_csv.write_text(rows)
    duration = ((num_frames - 1) * stride + 1) / fps
    ds = Kinetics(str(rep_csv), make_clip_sampler("random", duration), video_path_prefix=str(csv.parent),
                  transform=_ptv_transform(num_frames), decode_audio=False, decoder=decoder)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers)
    return _time_loader(loader, f"pytorchvideo ({decoder})")


class _Clock:
    """CPU seconds (``time.process_time``: all threads of this process) summed per stage."""

    def __init__(self) -> None:
        self.t: "dict[str, float]" = {}

    def __call__(self, stage: str, fn, *args):
        t0 = time.process_time()
        out = fn(*args)
        self.t[stage] = self.t.get(stage, 0.0) + time.process_time() - t0
        return out

    def line(self, label: str, n: int) -> str:
        parts = " | ".join(f"{k} {1e3 * v / n:.1f}" for k, v in self.t.items())
        return f"  {label}: {parts} | total {1e3 * sum(self.t.values()) / n:.1f} ms"


def profile_stages(csv: Path, num_frames: int, stride: int, video_frames: int, fps: int, clips: int = 48,
                   batch: int = 4) -> None:
    """Print CPU ms per clip of each stage for vtk ``seek``, vtk ``decord`` and pytorchvideo+PyAV, in this process,
    on the same ``clips`` random clips (each file opened once per clip, as pytorchvideo does; vtk's worker-level
    reader reuse is left out here)."""
    from fractions import Fraction

    import pytorchvideo.data.encoded_video_pyav as epv
    from pytorchvideo.data.encoded_video import EncodedVideo
    from torch.utils.data import default_collate
    from torchvision.transforms import v2

    from videovit.data.decode import SeekReader, VideoReader
    from videovit.data.samplers import random_clip, spatial_crop
    from videovit.data.transforms import KINETICS_MEAN, KINETICS_STD, NormalizeClip, to_video

    paths = [p for p, _ in load_csv(csv.parent, csv_path=csv).samples]
    rng = np.random.default_rng(0)
    todo = [(paths[i % len(paths)], random_clip(video_frames, num_frames, stride, rng)) for i in range(clips)]
    resize, norm = v2.Resize(224, antialias=True), NormalizeClip(KINETICS_MEAN, KINETICS_STD)
    print(f"profile {num_frames}x{stride}: CPU ms per clip, one process, {clips} clips, the same on every side")
    c, out = _Clock(), []
    for path, idx in todo:
        r = c("open+index", SeekReader, path)
        r._rgb = lambda frame, f=r._rgb: c("RGB", f, frame)  # timed apart from the decoding around it
        rgb_before = c.t.get("RGB", 0.0)
        frames = c("seek+decode", r.get_batch, idx)
        c.t["seek+decode"] -= c.t["RGB"] - rgb_before
        r.close()
        video = c("resize", resize, to_video(frames))
        crop = c("crop", lambda v: spatial_crop(v, 224, 1)[0], video)
        out.append(c("normalise", norm, crop))
        if len(out) == batch:
            c("collate", default_collate, out)
            out = []
    print(c.line("vtk seek", clips))
    c = _Clock()
    for path, idx in todo:
        r = c("open", VideoReader, path, "decord")
        c("get_batch (decode+RGB)", r.get_batch, idx)
    print(c.line("vtk decord", clips))
    c, out, ptv = _Clock(), [], _ptv_transform(num_frames)
    for path, idx in todo:
        ev = c("open", EncodedVideo.from_path, path, False, "pyav")
        pts = [epv.secs_to_pts(Fraction(int(i), fps), ev._video_time_base, ev._video_start_pts, round_mode="ceil")
               for i in (idx[0], idx[-1] + 1)]
        frames, _ = c("seek+decode", epv._pyav_decode_stream, ev._container, *pts, ev._container.streams.video[0],
                      {"video": 0})
        rgb = c("RGB", lambda fs: [torch.from_numpy(f.to_rgb().to_ndarray()) for f in fs], frames)
        video = c("stack+float", lambda x: epv.thwc_to_cthw(torch.stack(x)).to(torch.float32), rgb)
        out.append(c("transforms", ptv, {"video": video})["video"])
        ev.close()
        if len(out) == batch:
            c("collate", default_collate, out)
            out = []
    print(c.line("pytorchvideo+PyAV", clips))


LOADERS = (("pytorchvideo", "pyav"), ("pytorchvideo", "decord"), ("vtk", "decord"), ("vtk", "seek"))


def _recipes(text: str):
    try:
        out = [tuple(int(v) for v in r.lower().split("x")) for r in text.split(",") if r.strip()]
    except ValueError:
        out = []
    if not out or any(len(r) != 2 or min(r) < 1 for r in out):
        raise SystemExit(f"video_loader: --clips {text!r} must look like 8x32,16x4 (frames x stride, both >= 1)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/vtk-bench-videos"))
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--clips", default="8x32,16x4", help="Clip recipes, frames x stride, comma separated.")
    p.add_argument("--num-frames", type=int, default=None, help="One recipe (with --stride) instead of --clips.")
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--video-frames", type=int, default=300, help="Frames per generated video (10 s at 30 fps).")
    p.add_argument("--rounds", type=int, default=2, help="Alternating rounds; the median ratio is reported.")
    p.add_argument("--profile", action="store_true", help="Print CPU ms per clip of each stage, one process, "
                   "instead of the loader timings.")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    recipes = _recipes(a.clips) if a.num_frames is None and a.stride is None else [
        (a.num_frames or 8, a.stride if a.stride is not None else 32)]
    span = max((f - 1) * s + 1 for f, s in recipes)
    counts = (a.videos, a.repeats, a.workers + 1, a.batch_size, a.rounds, *(v for r in recipes for v in r))
    if min(counts) < 1 or a.video_frames < span or a.videos * a.repeats <= a.batch_size:
        raise SystemExit(f"video_loader: bad arguments (counts must be >= 1, workers >= 0, --video-frames "
                         f"{a.video_frames} >= the clip span {span}, and videos x repeats > one batch, since the "
                         f"first batch is not timed)")
    csv = make_videos(a.dir / f"{a.video_frames}f", a.videos, frames=a.video_frames, fps=a.fps)
    if a.profile:
        for nf, stride in recipes:
            profile_stages(csv, nf, stride, a.video_frames, a.fps)
        return 0
    table = []
    for nf, stride in recipes:
        print(f"{a.videos} videos x {a.repeats} repeats, clip {nf}x{stride}, workers {a.workers}, "
              f"batch {a.batch_size}")
        rates = {k: [] for k in LOADERS}
        for r in range(a.rounds):
            for lib, dec in LOADERS:
                if lib == "pytorchvideo":
                    rate = bench_pytorchvideo(csv, nf, stride, a.workers, a.batch_size, a.repeats, a.fps, dec)
                else:
                    rate = bench_vtk(csv, nf, stride, a.workers, a.batch_size, a.repeats, dec)
                rates[(lib, dec)].append(rate)
            pv = rates[("pytorchvideo", "pyav")][-1]
            print(f"round {r + 1}: ratio {rates[('vtk', 'decord')][-1] / pv:.2f}x (vtk decord) "
                  f"{rates[('vtk', 'seek')][-1] / pv:.2f}x (vtk seek) vs pytorchvideo (pyav)")
        med = {k: float(np.median(v)) for k, v in rates.items()}
        for dec in ("seek", "decord"):
            ratios = [rates[("vtk", dec)][i] / rates[("pytorchvideo", "pyav")][i] for i in range(a.rounds)]
            print(f"ratio vtk ({dec}) / pytorchvideo (pyav), median of {a.rounds} rounds: "
                  f"{float(np.median(ratios)):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
        table.append((f"{nf}x{stride}", med))
    print("\n| clip | pytorchvideo+PyAV | pytorchvideo+decord | vtk decord | vtk seek | vtk seek / ptv+PyAV | "
          "vtk seek / ptv+decord |\n|---|---|---|---|---|---|---|")
    for name, m in table:
        pa, pd = m[("pytorchvideo", "pyav")], m[("pytorchvideo", "decord")]
        vd, vs = m[("vtk", "decord")], m[("vtk", "seek")]
        print(f"| {name} | {pa:.2f} | {pd:.2f} | {vd:.2f} ({vd / pa:.1f}x) | {vs:.2f} | {vs / pa:.1f}x | "
              f"{vs / pd:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

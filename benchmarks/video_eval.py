"""Multi-view evaluation throughput: vtk (one decode per video) vs a PySlowFast-style loop (one decode per view).

PySlowFast's test loader (``slowfast/datasets/kinetics.py`` in test mode) lists every video ``T x S`` times; each
item opens the file with PyAV, seeks to its clip (``decoder.pyav_decode``: seek to the clip's start, decode to its
end), scales the short side and takes its one spatial crop, so a 4x3 evaluation decodes each video 12 times. vtk's
:class:`videovit.data.dataset.VideoViewDataset` decodes the frames of all ``T`` clips in one pass (decord,
``get_batch``) and cuts the ``S`` crops from them. Both sides here use the same model with the same weights, the
same clip frames (``uniform_clips``), the same resize/crop/normalisation code, the same DataLoader workers and
views per forward pass; the per-video probabilities of the two are compared to show it is the same evaluation.

    python -m benchmarks.video_eval --videos 8 --views 4x3 --workers 2

Prints videos/s of both and the ratio (vtk / PySlowFast-style).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["PerViewDataset", "bench_vtk", "bench_per_view", "main"]


class PerViewDataset(Dataset):
    """Item ``v * T * S + j``: view ``j`` of video ``v``, decoded on its own with PyAV (PySlowFast's test loop)."""

    def __init__(self, paths: List[Path], num_frames: int, stride: int, crop: int, views, mean, std) -> None:
        self.paths, self.num_frames, self.stride, self.crop, self.views = paths, num_frames, stride, crop, views
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.paths) * self.views[0] * self.views[1]

    def __getitem__(self, item: int):
        import av
        from torchvision.transforms import v2

        from videovit.data.samplers import spatial_crop, uniform_clips
        from videovit.data.transforms import NormalizeClip, to_video

        T, S = self.views
        v, j = divmod(item, T * S)
        t, s = divmod(j, S)
        with av.open(str(self.paths[v])) as container:
            stream = container.streams.video[0]
            fps, n = float(stream.average_rate), stream.frames
            idx = uniform_clips(n, self.num_frames, self.stride, T)[t]
            first, last = int(idx.min()), int(idx.max())
            tb = float(stream.time_base)
            container.seek(int(first / fps / tb), stream=stream, backward=True, any_frame=False)
            frames = {}
            for frame in container.decode(stream):
                k = int(round(frame.pts * tb * fps))
                if k in idx:
                    frames[k] = frame.to_ndarray(format="rgb24")
                if k >= last:
                    break
        clip = np.stack([frames[int(k)] for k in idx])  # (F, H, W, 3)
        video = v2.Resize(self.crop, antialias=True)(to_video(clip))  # (F, C, H', W')
        out = torch.empty((3, self.num_frames, self.crop, self.crop), dtype=torch.float32)
        NormalizeClip(self.mean, self.std)(spatial_crop(video, self.crop, S)[s], out=out)
        return out, v


def _model(name: str, num_frames: int, crop: int, embed_dim: int, depth: int, num_classes: int):
    import videovit

    torch.manual_seed(0)
    return videovit.create_model(name, num_frames=num_frames, img_size=crop, num_classes=num_classes,
                                 embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // 64)).eval()


def bench_vtk(model, paths, labels, a, views) -> tuple:
    from videovit.data.dataset import VideoViewDataset
    from videovit.data.layouts import VideoList
    from videovit.inference import score_views

    ds = VideoViewDataset(VideoList(list(zip(paths, labels)), ["c"]), a.num_frames, a.stride, a.crop_size, views,
                          backend="decord")
    t0 = time.perf_counter()
    probs = [p.mean(0) for _, p, _ in score_views(model, ds, range(len(ds)), torch.device("cpu"), 1, a.workers)]
    return len(paths) / (time.perf_counter() - t0), torch.stack(probs)


def bench_per_view(model, paths, a, views) -> tuple:
    from videovit.data.transforms import KINETICS_MEAN, KINETICS_STD

    V = views[0] * views[1]
    ds = PerViewDataset(paths, a.num_frames, a.stride, a.crop_size, views, KINETICS_MEAN, KINETICS_STD)
    t0 = time.perf_counter()
    probs = []
    for clips, _ in DataLoader(ds, batch_size=V, num_workers=a.workers):  # one video's views per forward pass
        with torch.no_grad():
            probs.append(model(clips).float().softmax(-1).mean(0))
    return len(paths) / (time.perf_counter() - t0), torch.stack(probs)


def main(argv=None) -> int:
    from benchmarks.video_loader import make_videos
    from videovit.data.samplers import parse_views

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/vtk-bench-videos"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--video-frames", type=int, default=300, help="Frames per generated video (10 s at 30 fps).")
    p.add_argument("--views", default="4x3")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--model", default="timesformer")
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args(argv)
    views = parse_views(a.views)
    torch.set_num_threads(1)
    csv = make_videos(a.dir / f"{a.video_frames}f", a.videos, frames=a.video_frames)
    paths = sorted(csv.parent.glob("video_*.mp4"))[:a.videos]
    model = _model(a.model, a.num_frames, a.crop_size, a.embed_dim, a.depth, 400)
    print(f"{len(paths)} videos (340x256, {a.video_frames} frames), {a.views} views of {a.num_frames}x{a.stride} at "
          f"{a.crop_size} px, {a.model} embed_dim {a.embed_dim} depth {a.depth}, workers {a.workers}, 1 thread")
    x = torch.randn(views[0] * views[1], 3, a.num_frames, a.crop_size, a.crop_size)
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        model(x)
    model_s = time.perf_counter() - t0
    print(f"model alone: {model_s * 1000:.0f} ms per video ({views[0] * views[1]} views in one forward pass)")
    ratios = []
    for r in range(a.rounds):
        base, p_base = bench_per_view(model, paths, a, views)
        ours, p_ours = bench_vtk(model, paths, [0] * len(paths), a, views)
        diff = float((p_base - p_ours).abs().max())
        ratios.append(ours / base)
        print(f"round {r + 1}: PySlowFast-style (decode per view, PyAV) {base:.3f} videos/s | vtk (one decode per "
              f"video) {ours:.3f} videos/s | ratio {ratios[-1]:.2f}x | max |p_vtk - p_ref| {diff:.1e}")
    print(f"| views | clip | PySlowFast-style videos/s | vtk videos/s | ratio | model alone videos/s |\n"
          f"|---|---|---|---|---|---|\n| {a.views} | {a.num_frames}x{a.stride} | {base:.3f} | {ours:.3f} | "
          f"{float(np.median(ratios)):.2f}x | {1 / model_s:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fixtures for the video data/pipeline tests: a tiny synthetic Kinetics folder and odd video files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from videovit.data.synth import SynthSpec, render_video, write_kinetics_synth, write_video


@pytest.fixture(scope="session")
def synth_k400(tmp_path_factory) -> Path:
    """3 motion classes x 4 train (1 val) videos of 12 frames at 32x32, in every Kinetics layout."""
    out = tmp_path_factory.mktemp("k400")
    write_kinetics_synth(out, SynthSpec(classes=3, videos_per_class=4, frames=12, size=32, seed=0))
    return out


@pytest.fixture(scope="session")
def odd_videos(tmp_path_factory) -> dict:
    """Videos that real datasets contain: no audio, with audio, AVI codecs, a 3-frame clip, corrupt and empty."""
    out = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    video = render_video(1, 10, 32, rng)
    files = {
        "h264": ("clip.mp4", "libx264", False),
        "h264_audio": ("clip_audio.mp4", "libx264", True),
        "msmpeg4": ("clip_msmpeg4.avi", "msmpeg4", False),
        "msmpeg4v2_audio": ("clip_msmpeg4v2.avi", "msmpeg4v2", True),
        "cinepak": ("clip_cinepak.avi", "cinepak", False),
    }
    paths = {"frames": video}
    for key, (name, codec, audio) in files.items():
        write_video(out / name, video, fps=25, codec=codec, audio=audio)
        paths[key] = out / name
    write_video(out / "short.mp4", video[:3], fps=25)
    paths["short"] = out / "short.mp4"
    corrupt = out / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.bytes(4000))
    paths["corrupt"] = corrupt
    (out / "empty.mp4").write_bytes(b"")
    paths["empty"] = out / "empty.mp4"
    paths["vfr"] = _write_vfr(out / "vfr.mp4", video)
    return paths


def _write_vfr(path: Path, video: np.ndarray) -> Path:
    """An mp4 with irregular frame timestamps (variable frame rate)."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = np.cumsum([0] + [20 if i % 2 else 70 for i in range(len(video) - 1)])  # 20 ms / 70 ms gaps
        for t, frame in enumerate(video):
            f = av.VideoFrame.from_ndarray(frame, format="rgb24")
            f.pts, f.time_base = int(pts[t]), Fraction(1, 1000)
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path

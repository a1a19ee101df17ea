"""The ``seek`` backend (:class:`SeekReader`): the frames of a front-to-back decode, from a keyframe seek that skips
unneeded non-reference frames, reused per process and never across a fork."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from engine.errors import UserError
from videovit.data import decode
from videovit.data.decode import SeekReader, VideoReader, open_reader
from videovit.data.synth import render_video


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory) -> Path:
    """90 frames with a keyframe every 12 and B-frames, so clips need real seeks and skips."""
    import av

    path = tmp_path_factory.mktemp("gop") / "gop.mp4"
    video = np.concatenate([render_video(c, 30, 48, np.random.default_rng(c)) for c in (0, 1, 2)])
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(30))
        s.width, s.height, s.pix_fmt = 48, 48, "yuv420p"
        s.options = {"g": "12", "bf": "3", "crf": "20"}
        for frame in video:
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def _clips(n: int, rng) -> list:
    out = [[0], [n - 1], list(range(0, n, 7)), [5, 5, 3]]  # edges, spread, repeats out of order
    for _ in range(6):
        start = int(rng.integers(0, n - 16))
        out.append(list(range(start, start + 16, int(rng.integers(1, 4)))))
    return out


@pytest.mark.parametrize("key", ["h264", "h264_audio", "msmpeg4", "vfr", "short"])
def test_seek_equals_sequential_decode(odd_videos, key):
    seek, full = SeekReader(odd_videos[key]), VideoReader(odd_videos[key], backend="pyav")
    assert len(seek) == len(full)
    for idx in ([0], [len(full) - 1], list(range(len(full))), [2, 0, 2]):
        np.testing.assert_array_equal(seek.get_batch(idx), full.get_batch(idx))


def test_seek_in_long_gops(gop_video, monkeypatch):
    seek, full = SeekReader(gop_video), VideoReader(gop_video, backend="pyav")
    assert len(seek) == 90
    everything = full.get_batch(range(90))
    monkeypatch.setattr(decode, "VideoReader", None)  # no fallback to a front-to-back decode
    for idx in _clips(90, np.random.default_rng(0)):
        np.testing.assert_array_equal(seek.get_batch(idx), everything[idx])


def test_one_seek_per_run_of_frames_between_keyframes(gop_video):
    """Frames with a keyframe between them are decoded from that keyframe (a new seek), not through the gap."""
    reader, full = SeekReader(gop_video), VideoReader(gop_video, backend="pyav")
    seeks = []

    class Counting:  # the container, with its seeks recorded
        def __init__(self, container):
            self.container = container

        def seek(self, offset, **kw):
            seeks.append(offset)
            return self.container.seek(offset, **kw)

        def __getattr__(self, name):
            return getattr(self.container, name)

    reader._container = Counting(reader._container)
    idx = [80, 1, 50, 5, 52, 50]  # runs {1, 5}, {50, 52}, {80}: keyframes every 12 frames
    np.testing.assert_array_equal(reader.get_batch(idx), full.get_batch(idx))
    assert seeks == [int(reader._pts[i]) for i in (1, 50, 80)]
    seeks.clear()
    reader.get_batch([30, 31, 32, 33])  # 30..33 lie between the keyframes at 24 and 36: one seek
    assert len(seeks) == 1


def test_seek_bad_files_name_the_file(odd_videos):
    for key in ("corrupt", "empty"):
        with pytest.raises(UserError, match=str(odd_videos[key].name)):
            SeekReader(odd_videos[key])
    with pytest.raises(ValueError, match="out of range"):
        SeekReader(odd_videos["h264"]).get_batch([10])


def test_readers_are_reused_per_process_only(gop_video, monkeypatch):
    decode._SEEK_READERS.clear()
    a = open_reader(gop_video, "seek")
    assert open_reader(gop_video, "seek") is a  # same process: the open reader is reused
    monkeypatch.setattr(decode.os, "getpid", lambda: -1)  # as in a forked DataLoader worker
    b = open_reader(gop_video, "seek")
    assert b is not a and list(decode._SEEK_READERS) == [(-1, str(gop_video))]
    np.testing.assert_array_equal(b.get_batch([40, 41]), a.get_batch([40, 41]))
    assert isinstance(open_reader(gop_video, "pyav"), VideoReader)


def test_clip_dataset_seek_in_workers(gop_video, tmp_path):
    """Training clips through 2 forked workers with the seek backend equal the PyAV backend's, item for item."""
    from videovit.data.dataset import VideoClipDataset
    from videovit.data.layouts import VideoList

    videos = VideoList([(gop_video, 0)] * 6, ["a"])
    open_reader(gop_video, "seek")  # a reader in the parent before the fork: the workers must open their own
    got = {}
    for backend in ("seek", "pyav"):
        ds = VideoClipDataset(videos, num_frames=8, stride=3, backend=backend, seed=1)
        got[backend] = torch.cat([x for x, _ in DataLoader(ds, batch_size=2, num_workers=2)])
    assert got["seek"].shape == (6, 8, 48, 48, 3)
    assert torch.equal(got["seek"], got["pyav"])
    assert len({tuple(c[0, 0, 0].tolist()) for c in got["seek"]}) > 1  # different clips, not one repeated


@pytest.mark.parametrize("key", ["h264", "h264_audio", "msmpeg4", "msmpeg4v2_audio", "cinepak", "vfr", "short"])
def test_auto_backend_seeks_and_gives_the_full_decode_frames(odd_videos, key):
    decode._SEEK_READERS.clear()
    reader = open_reader(odd_videos[key], "auto")
    assert isinstance(reader, SeekReader)
    full = VideoReader(odd_videos[key], backend="pyav")
    idx = [len(full) - 1, 0, 1, 1]
    np.testing.assert_array_equal(reader.get_batch(idx), full.get_batch(idx))


def test_auto_falls_back_to_decord_then_pyav(odd_videos, monkeypatch):
    decode._SEEK_READERS.clear()

    def refuse(path, verify=True):
        raise UserError(f"{path}: cannot decode video (pyav: refused)")

    monkeypatch.setattr(decode, "SeekReader", refuse)
    reader = open_reader(odd_videos["h264"], "auto")
    assert isinstance(reader, VideoReader) and reader.backend == "decord"
    with pytest.raises(UserError, match="refused"):
        open_reader(odd_videos["h264"], "seek")
    with pytest.raises(UserError, match=r"corrupt\.mp4: cannot decode video \(decord: .*; pyav: "):
        open_reader(odd_videos["corrupt"], "auto")


def test_seek_refuses_a_truncated_mp4(odd_videos, tmp_path):
    from video_faults import truncate_faststart

    left = truncate_faststart(odd_videos["h264"], tmp_path / "cut.mp4")
    with pytest.raises(UserError, match=rf"cut\.mp4: truncated video: its index lists 10 frames but the file holds "
                                        rf"only {left}"):
        open_reader(tmp_path / "cut.mp4", "auto")
    assert len(SeekReader(tmp_path / "cut.mp4", verify=False)) == left


def test_reader_cache_is_bounded_by_count_and_pixels(odd_videos, gop_video, monkeypatch):
    decode._SEEK_READERS.clear()
    paths = [odd_videos[k] for k in ("h264", "h264_audio", "msmpeg4", "vfr", "short")] + [gop_video]
    monkeypatch.setattr(decode, "_SEEK_READERS_MAX", 3)
    for p in paths:
        open_reader(p, "auto")
    assert [k[1] for k in decode._SEEK_READERS] == [str(p) for p in paths[-3:]]  # the 3 most recent
    monkeypatch.setattr(decode, "_SEEK_PIXELS_MAX", 48 * 48 + 32 * 32)  # gop_video (48x48) and one 32x32 clip
    open_reader(paths[0], "auto")
    assert [k[1] for k in decode._SEEK_READERS] == [str(gop_video), str(paths[0])]
    open_reader(paths[1], "auto")  # two 32x32 readers fit, gop_video no longer does
    assert [k[1] for k in decode._SEEK_READERS] == [str(paths[0]), str(paths[1])]
    assert open_reader(paths[1], "auto") is open_reader(paths[1], "auto")

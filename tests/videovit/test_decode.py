"""Decoding odd files: audio or not, AVI codecs, variable frame rate, short, corrupt and empty files."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import UserError
from videovit.data import decode
from videovit.data.decode import VideoReader


@pytest.mark.parametrize("key", ["h264", "h264_audio", "msmpeg4", "msmpeg4v2_audio", "cinepak"])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decodes_every_container(odd_videos, key, backend):
    reader = VideoReader(odd_videos[key], backend=backend)
    assert len(reader) == 10 and reader.backend == backend
    frames = reader.get_batch([7, 0, 7])
    # decord 0.6.0 opens small rgb24 cinepak files but returns 6-channel frames; the reader falls back to PyAV
    assert reader.backend == ("pyav" if key == "cinepak" else backend)
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0], frames[2])
    # lossy codecs: close to the rendered frames, and frame 7 is not frame 0 (the shape moves)
    truth = odd_videos["frames"].astype(int)
    assert np.abs(frames[1].astype(int) - truth[0]).mean() < 12
    assert np.abs(frames[0].astype(int) - truth[7]).mean() < np.abs(frames[0].astype(int) - truth[0]).mean()


def test_decord_and_pyav_agree(odd_videos):
    a = VideoReader(odd_videos["h264_audio"], backend="decord").get_batch([0, 4, 9])
    b = VideoReader(odd_videos["h264_audio"], backend="pyav").get_batch([0, 4, 9])
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2


def test_falls_back_to_pyav_when_decord_fails(odd_videos, monkeypatch):
    def broken(self, num_threads):
        raise RuntimeError("decord cannot open this")

    monkeypatch.setattr(decode.VideoReader, "_open_decord", broken)
    reader = VideoReader(odd_videos["cinepak"])
    assert reader.backend == "pyav" and reader.get_batch([9]).shape == (1, 32, 32, 3)


def test_variable_frame_rate_by_index(odd_videos):
    reader = VideoReader(odd_videos["vfr"])
    assert len(reader) == 10
    truth = odd_videos["frames"].astype(int)
    frames = reader.get_batch(list(range(10))).astype(int)
    errors = [np.abs(frames[i] - truth[i]).mean() for i in range(10)]
    assert max(errors) < 12


@pytest.mark.parametrize("key,needle", [("corrupt", "cannot decode video"), ("empty", "empty file")])
def test_bad_files_raise_user_error_naming_them(odd_videos, key, needle):
    with pytest.raises(UserError, match=needle) as info:
        VideoReader(odd_videos[key])
    assert str(odd_videos[key]) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such video file"):
        VideoReader(tmp_path / "nope.mp4")


def test_out_of_range_indices(odd_videos):
    with pytest.raises(ValueError, match="out of range"):
        VideoReader(odd_videos["short"]).get_batch([0, 3])

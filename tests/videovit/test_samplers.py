"""Clip samplers: uniform test views cover the video, random clips stay inside it, short videos stretch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videovit.data.samplers import (clip_indices, parse_views, random_clip, spatial_crop, spatial_crop_boxes,
                                    uniform_clips)


@pytest.mark.parametrize("video_len,frames,stride,T", [(300, 8, 32, 3), (100, 16, 4, 5), (64, 8, 8, 1), (50, 4, 2, 4)])
def test_uniform_views_cover_the_video(video_len, frames, stride, T):
    clips = uniform_clips(video_len, frames, stride, T)
    assert len(clips) == T and all(len(c) == frames for c in clips)
    assert all(np.all(np.diff(c) == stride) for c in clips)
    if T > 1:
        assert clips[0][0] == 0 and clips[-1][-1] == video_len - 1
        starts = [c[0] for c in clips]
        assert np.all(np.diff(starts) > 0) and np.ptp(np.diff(starts)) <= 1  # evenly spaced
    else:
        span = (frames - 1) * stride + 1
        assert clips[0][0] == (video_len - span) // 2
    again = uniform_clips(video_len, frames, stride, T)
    assert all(np.array_equal(a, b) for a, b in zip(clips, again))


def test_random_clip_inside_and_deterministic():
    starts = set()
    for seed in range(50):
        a = random_clip(100, 8, 4, np.random.default_rng(seed))
        b = random_clip(100, 8, 4, np.random.default_rng(seed))
        assert np.array_equal(a, b) and a.min() >= 0 and a.max() < 100
        starts.add(int(a[0]))
    assert len(starts) > 20 and max(starts) <= 100 - 29


def test_short_video_stretches_forward():
    """Too-short videos: the clip spreads over all frames in order (no jump back, which reads as reverse motion)."""
    assert clip_indices(0, 8, 1, 5).tolist() == [0, 1, 1, 2, 2, 3, 3, 4]
    assert uniform_clips(3, 4, 2, 2)[1].tolist() == [0, 1, 1, 2]
    assert random_clip(40, 16, 4, np.random.default_rng(0)).tolist() == np.round(np.linspace(0, 39, 16)).tolist()
    for length in range(1, 70):
        idx = clip_indices(0, 16, 4, length)
        assert len(idx) == 16 and idx[0] == 0 and idx[-1] == min(length - 1, 60) and np.all(np.diff(idx) >= 0)


def test_whole_video_sampling():
    idx = clip_indices(0, 4, 0, 100)
    assert idx.tolist() == [12, 37, 62, 87]


def test_spatial_crops():
    assert spatial_crop_boxes(32, 48, 32, 3) == [(0, 0), (0, 8), (0, 16)]
    assert spatial_crop_boxes(48, 32, 32, 1) == [(8, 0)]
    video = torch.arange(48 * 32).reshape(1, 48, 32)
    crops = spatial_crop(video, 32, 3)
    assert [int(c[0, 0, 0]) for c in crops] == [0, 8 * 32, 16 * 32]
    with pytest.raises(ValueError, match="larger than the frame"):
        spatial_crop_boxes(16, 16, 32, 1)


def test_parse_views():
    assert parse_views("4x3") == (4, 3) and parse_views("1X1") == (1, 1)
    for bad in ("4", "0x3", "axb"):
        with pytest.raises(ValueError):
            parse_views(bad)

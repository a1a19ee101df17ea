"""Temporal clip samplers and spatial crops, as pure functions of the video length (deterministic given an RNG).

Training takes one random clip per video; testing takes ``T`` uniformly spaced clips x ``S`` spatial crops per video
and averages the softmax over the ``T*S`` views (multi-view testing as in PySlowFast / TimeSformer, Bertasius et al.,
arXiv:2102.05095; ViViT uses 4x3, Arnab et al., arXiv:2103.15691; MViT 5x1, Fan et al., arXiv:2104.11227).

A clip of ``num_frames`` frames taken every ``stride`` frames spans ``(num_frames - 1) * stride + 1`` frames. When
the video is shorter than that, the clip is **stretched** over the whole video: ``num_frames`` indices evenly spread
from the first to the last frame, repeating frames when the video has fewer than ``num_frames``
(``[0, 1, 1, 2, 2, 3, 3, 4]`` for 8 of 5 frames, as pytorchvideo's ``UniformTemporalSubsample``). Time always runs
forward: looping (``[0, 1, 2, 3, 4, 0, 1, 2]``) would add a jump back to the start that reads as motion in the
opposite direction (a TimeSformer trained on the motion set called a looped 5-frame "right" clip "left" in 1 of 6
cases, the stretched clip never), and PySlowFast's clamping freezes the tail. ``stride=0`` spreads the frames evenly
over the whole video (STAM, VTN-style sampling).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch

__all__ = ["clip_span", "clip_indices", "random_clip", "uniform_clips", "spatial_crop_boxes", "spatial_crop",
           "parse_views"]


def clip_span(num_frames: int, stride: int) -> int:
    """Frames covered by one clip (``stride=0``: not defined, the whole video)."""
    return (num_frames - 1) * max(stride, 1) + 1


def clip_indices(start: int, num_frames: int, stride: int, video_len: int) -> np.ndarray:
    """Frame indices of the clip starting at ``start``; stretched over the whole video when it is too short."""
    if num_frames < 1 or video_len < 1:
        raise ValueError(f"num_frames={num_frames} and video_len={video_len} must be >= 1")
    if stride <= 0:  # whole-video sampling: centres of num_frames equal segments
        return np.floor((np.arange(num_frames) + 0.5) * video_len / num_frames).astype(np.int64)
    if video_len < clip_span(num_frames, stride):  # too short: spread over all frames, in order
        return np.round(np.linspace(0, video_len - 1, num_frames)).astype(np.int64)
    return start + np.arange(num_frames, dtype=np.int64) * stride


def random_clip(video_len: int, num_frames: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """One training clip at a uniformly random start."""
    max_start = max(video_len - clip_span(num_frames, stride), 0)
    start = int(rng.integers(0, max_start + 1))
    return clip_indices(start, num_frames, stride, video_len)


def uniform_clips(video_len: int, num_frames: int, stride: int, num_clips: int) -> List[np.ndarray]:
    """``num_clips`` test clips whose starts are evenly spaced from the first to the last possible start.

    The first clip starts at frame 0 and, when the video is long enough, the last clip ends on the last frame, so
    the clips cover the video. ``num_clips=1`` takes the centre clip.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips={num_clips} must be >= 1")
    max_start = max(video_len - clip_span(num_frames, stride), 0)
    if num_clips == 1:
        starts = [max_start // 2]
    else:
        starts = np.round(np.linspace(0, max_start, num_clips)).astype(int).tolist()
    return [clip_indices(s, num_frames, stride, video_len) for s in starts]


def spatial_crop_boxes(height: int, width: int, size: int, num_crops: int) -> List[Tuple[int, int]]:
    """Top-left corners of ``num_crops`` square crops spread along the longer side (1: centre; 3: PySlowFast)."""
    if size > min(height, width):
        raise ValueError(f"crop size {size} larger than the frame {height}x{width}")
    if num_crops < 1:
        raise ValueError(f"num_crops={num_crops} must be >= 1")
    cy, cx = (height - size) // 2, (width - size) // 2
    if num_crops == 1:
        return [(cy, cx)]
    along = np.round(np.linspace(0, (height if height > width else width) - size, num_crops)).astype(int)
    return [(int(a), cx) if height > width else (cy, int(a)) for a in along]


def spatial_crop(video: torch.Tensor, size: int, num_crops: int) -> List[torch.Tensor]:
    """Crop ``video`` ``(..., H, W)`` into ``num_crops`` views of ``size x size``."""
    H, W = video.shape[-2:]
    return [video[..., y:y + size, x:x + size] for y, x in spatial_crop_boxes(H, W, size, num_crops)]


def parse_views(text: str) -> Tuple[int, int]:
    """Parse ``"TxS"`` (e.g. ``"4x3"``) into ``(T, S)``."""
    try:
        t, s = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"views {text!r} must look like TxS, e.g. 4x3") from None
    if t < 1 or s < 1:
        raise ValueError(f"views {text!r}: T and S must be >= 1")
    return t, s

"""Map-style video datasets: one random clip per video for training, all ``T x S`` test views per video for eval.

Unlike pytorchvideo's ``LabeledVideoDataset`` (an ``IterableDataset`` whose batch count depends on ``num_workers``,
pytorchvideo #102), these are plain map-style datasets: ``len`` is the number of videos, any sampler and
``DistributedSampler`` work, and the training randomness of item ``i`` is seeded from ``(seed, epoch, i)`` so a
resumed run replays exactly, whatever the number of workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.errors import UserError

from .decode import open_reader
from .layouts import VideoList
from .samplers import random_clip, uniform_clips
from .transforms import eval_transform

__all__ = ["VideoClipDataset", "VideoViewDataset", "SkipUnreadable", "Unreadable"]

_LOG = logging.getLogger(__name__)


class VideoClipDataset(Dataset):
    """Training dataset: item ``i`` is one randomly placed clip of video ``i`` and its label.

    Args:
        videos: Samples from :mod:`videovit.data.layouts`.
        num_frames: Frames per clip.
        stride: Frame step inside a clip (``0``: spread over the whole video).
        transform: Maps uint8 ``(T, H, W, 3)`` frames to a tensor ``(C, T, H, W)``
            (see :func:`videovit.data.transforms.train_transform`); ``None`` returns the raw frames.
        seed: Base seed; item randomness is seeded from ``(seed, epoch, index)``.
        backend: Decoder backend (:func:`videovit.data.decode.open_reader`): ``"auto"`` (PyAV seek, falling back
            to decord then PyAV front to back), ``"seek"``, ``"decord"`` or ``"pyav"``.
        max_retries: Unreadable videos are replaced by the next one, at most this many times in a row.
    """

    def __init__(self, videos: VideoList, num_frames: int = 8, stride: int = 4, transform: Optional[Callable] = None,
                 seed: int = 0, backend: str = "auto", max_retries: int = 10) -> None:
        if num_frames < 1 or stride < 0:
            raise ValueError(f"num_frames={num_frames} must be >= 1 and stride={stride} >= 0")
        if len(videos) == 0:
            raise UserError("the dataset has no readable videos")
        self.videos, self.num_frames, self.stride = videos, num_frames, stride
        self.transform, self.backend, self.max_retries = transform, backend, max_retries
        self.seed, self.epoch = seed, 0

    @property
    def classes(self):
        return self.videos.classes

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch mixed into each item's seed."""
        self.epoch = int(epoch)

    def set_random_state(self, seed: int) -> None:
        """Set the base seed (the engine calls this with the run's seed)."""
        self.seed = int(seed)

    def _load(self, index: int, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
        path, label = self.videos.samples[index]
        reader = open_reader(path, self.backend)  # "auto"/"seek": reused per worker process
        return reader.get_batch(random_clip(len(reader), self.num_frames, self.stride, rng)), label

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for attempt in range(self.max_retries + 1):
            j = (index + attempt) % len(self)
            try:
                frames, label = self._load(j, rng)
                break
            except UserError as e:
                if attempt == self.max_retries:
                    raise
                _LOG.warning("skipping unreadable video: %s", e)
        if self.transform is None:
            return torch.from_numpy(frames), label
        with torch.random.fork_rng(devices=[]):  # v2 transforms draw from torch's global RNG
            torch.manual_seed(int(rng.integers(2 ** 62)))
            return self.transform(frames), label


class VideoViewDataset(Dataset):
    """Evaluation dataset: item ``i`` holds all ``T x S`` views of video ``i``, decoded in one pass.

    Args:
        videos: Samples from :mod:`videovit.data.layouts`.
        num_frames: Frames per clip.
        stride: Frame step inside a clip (``0``: spread over the whole video, then ``T`` should be 1).
        crop_size: Spatial size of each view.
        views: ``(T, S)``: ``T`` uniformly spaced clips x ``S`` spatial crops.
        mean: Normalisation mean.
        std: Normalisation std.
        backend: Decoder backend.

    Returns (per item):
        ``(views, label)`` with ``views`` ``(T*S, C, num_frames, crop, crop)``, clip-major.
    """

    def __init__(self, videos: VideoList, num_frames: int = 8, stride: int = 4, crop_size: int = 224,
                 views: Tuple[int, int] = (1, 1), mean=None, std=None, backend: str = "auto",
                 short_side: Optional[int] = None) -> None:
        if num_frames < 1 or stride < 0 or views[0] < 1 or views[1] < 1:
            raise ValueError(f"num_frames={num_frames}, stride={stride}, views={views} must be positive")
        if len(videos) == 0:
            raise UserError("the dataset has no readable videos")
        self.videos, self.num_frames, self.stride, self.views = videos, num_frames, stride, tuple(views)
        kw = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
        self.transform = eval_transform(crop_size, views[1], short_side=short_side, **kw)
        self.backend = backend

    @property
    def classes(self):
        return self.videos.classes

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int):
        path, label = self.videos.samples[index]
        reader = open_reader(path, self.backend)
        clips = uniform_clips(len(reader), self.num_frames, self.stride, self.views[0])
        frames = reader.get_batch(np.concatenate(clips))  # one decode for every clip: (T*F, H, W, 3)
        per_clip = frames.reshape(len(clips), self.num_frames, *frames.shape[1:])
        views = torch.cat([self.transform(f) for f in per_clip])  # (T*S, C, F, h, w)
        return views, label


@dataclass(frozen=True)
class Unreadable:
    """Stands in for the item of a video that cannot be decoded (see :class:`SkipUnreadable`).

    Attributes:
        index: The item's index in the wrapped dataset.
        path: The video file.
        message: The one-line error naming the file.
    """

    index: int
    path: Path
    message: str


class SkipUnreadable(Dataset):
    """Wraps a :class:`VideoViewDataset` so that an undecodable (or truncated) video gives an :class:`Unreadable`
    item instead of raising: validation skips it and counts it instead of failing the run.

    Args:
        dataset: A dataset with ``videos.samples`` whose items raise :class:`~engine.errors.UserError` for files
            that cannot be read.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except UserError as e:
            videos = getattr(self.dataset, "videos", None)
            return Unreadable(index, Path(videos.samples[index][0]) if videos is not None else Path(), str(e))

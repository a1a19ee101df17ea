"""Video data: decoding (decord, PyAV fallback), Kinetics-400 / UCF101 layouts, clip samplers, transforms,
map-style datasets and the synthetic motion set. See ``docs/videovit.md``."""

from .dataset import VideoClipDataset, VideoViewDataset
from .decode import VideoReader, read_frames
from .layouts import VideoList, load_dataset, load_kinetics, load_ucf101
from .samplers import parse_views, random_clip, uniform_clips
from .transforms import MixupCutmix, eval_transform, train_transform

__all__ = ["VideoClipDataset", "VideoViewDataset", "VideoReader", "read_frames", "VideoList", "load_dataset",
           "load_kinetics", "load_ucf101", "parse_views", "random_clip", "uniform_clips", "MixupCutmix",
           "eval_transform", "train_transform"]

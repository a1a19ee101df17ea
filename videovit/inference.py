"""Inference with a trained video run: multi-view evaluation of a split and top-k prediction of video files.

A video is scored as in TimeSformer (Bertasius et al., arXiv:2102.05095), ViViT (Arnab et al., arXiv:2103.15691)
and MViT (Fan et al., arXiv:2104.11227): the softmax averaged over ``T x S`` views (``T`` uniformly spaced clips x
``S`` spatial crops). The clip sampling, crop size and mean/std are the run's own (``cfg.data_args``, filled from
the model's registry recipe when it was trained).

Example::

    >>> from videovit.inference import Predictor
    >>> p = Predictor("runs/ts8", device="cpu", views=(2, 3))
    >>> result = p.evaluate("val")            # result.metrics["top1"], result.probs (N, K), result.labels (N,)
    >>> p.predict_file("clip.mp4", top_k=5).top[0]
    {'label': 'move_left', 'index': 0, 'score': 0.99}
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from engine.errors import UserError
from engine.pretrained import model_overrides

from .data.dataset import VideoViewDataset
from .data.decode import VideoReader
from .data.samplers import parse_views, uniform_clips
from .data.transforms import eval_transform
from .task import VideoOptions, classification_metrics, load_split, predict_views, video_options

__all__ = ["Predictor", "Evaluation", "Prediction", "select_device", "build_model_from_run", "predict_video",
           "class_names", "collect_videos"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
Views = Union[str, Tuple[int, int]]


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        UserError: A malformed name, or a CUDA device this machine does not have.
    """
    if not _DEVICE_RE.match(str(name)):
        raise UserError(f"--device: {name!r} is not one of auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return device


def build_model_from_run(cfg, state_dict: Dict[str, Tensor], device: Optional[torch.device] = None) -> nn.Module:
    """Rebuild a video model from a run's config and weights (``engine.load_run``), in ``eval()`` mode."""
    import videovit

    try:
        model = videovit.create_model(cfg.model, **model_overrides(cfg.model_args))  # never re-reads --pretrained
    except ValueError as e:
        raise UserError(f"checkpoint model {cfg.model!r}: {e}") from None
    model.load_state_dict(state_dict)
    return model.to(device or torch.device("cpu")).eval()


def class_names(cfg) -> List[str]:
    """The run's class names (``data_args.classes``), else ``0..K-1`` from ``model_args.num_classes``."""
    classes = cfg.data_args.get("classes")
    if classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(int(cfg.model_args.get("num_classes", 0)))]


def _views(views: Views) -> Tuple[int, int]:
    """``"TxS"`` or ``(T, S)`` -> ``(T, S)``; a malformed value is a user error naming ``--views``."""
    if isinstance(views, str):
        try:
            return parse_views(views)
        except ValueError as e:
            raise UserError(f"--views: {e}") from None
    t, s = (int(v) for v in views)
    return t, s


def predict_video(model: nn.Module, path: Path, opts: VideoOptions, views: Tuple[int, int], device: torch.device
                  ) -> Tuple[Tensor, np.ndarray, np.ndarray]:
    """Class probabilities of one video file (softmax averaged over ``views``) and the sampled frames.

    Args:
        model: A video classifier in ``eval()`` mode on ``device``; input ``(B, C, T, H, W)``.
        path: The video file.
        opts: Clip sampling, crop and normalisation of the run (:func:`videovit.task.video_options`).
        views: ``(T, S)``: ``T`` uniform clips x ``S`` spatial crops.
        device: Model device.

    Returns:
        ``(probs (K,), frames, indices)`` with ``frames`` the uint8 ``(num_frames, H, W, 3)`` of the centre clip
        and ``indices`` their frame numbers in the file (repeated when a short video is stretched).

    Raises:
        UserError: The file cannot be decoded (the message names it).
    """
    reader = VideoReader(path, backend=opts.backend)
    clips = uniform_clips(len(reader), opts.num_frames, opts.stride, views[0])
    flat = reader.get_batch(np.concatenate(clips))  # (T*F, H, W, 3)
    frames = flat.reshape(len(clips), opts.num_frames, *flat.shape[1:])  # (T, F, H, W, 3)
    transform = eval_transform(opts.crop_size, views[1], opts.mean, opts.std, opts.short_side)
    batch = torch.cat([transform(f) for f in frames])  # (T*S, C, F, h, w)
    with torch.no_grad():
        probs = model(batch.to(device)).float().softmax(-1).mean(0).cpu()  # (K,)
    return probs, frames[len(frames) // 2], clips[len(clips) // 2]


@dataclasses.dataclass
class Evaluation:
    """What :meth:`Predictor.evaluate` returns.

    Attributes:
        probs: ``(N, K)`` softmax averaged over each video's views.
        labels: ``(N,)`` true class indices.
        metrics: :func:`videovit.task.classification_metrics` (top-1, top-5, per-class, confusion, ...).
        classes: Class names (``K``).
        split: The split evaluated.
        views: ``"TxS"``.
        data: Dataset name.
        data_dir: Dataset folder.
        missing: Listed videos whose file does not exist (skipped).
    """

    probs: Tensor
    labels: Tensor
    metrics: Dict[str, Any]
    classes: List[str]
    split: str
    views: str
    data: str
    data_dir: str
    missing: int

    @property
    def videos(self) -> int:
        """Videos evaluated."""
        return int(self.labels.numel())


@dataclasses.dataclass
class Prediction:
    """What :meth:`Predictor.predict_file` returns.

    Attributes:
        path: The video file.
        top: ``[{"label", "index", "score"}, ...]``, best first.
        probs: ``(K,)`` class probabilities.
        frames: uint8 ``(num_frames, H, W, 3)``: the centre clip as sampled.
        indices: The frame numbers of ``frames`` in the file.
    """

    path: Path
    top: List[Dict[str, Any]]
    probs: Tensor
    frames: np.ndarray
    indices: np.ndarray


class Predictor:
    """A trained video model plus its run's test protocol (clip sampling, crop, mean/std, views).

    Args:
        checkpoint: Run folder (``checkpoints/best``, else ``last``) or ``.safetensors`` file.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        views: ``"TxS"`` or ``(T, S)``: clips x spatial crops averaged per video.
        precision: ``auto`` (bf16 where the device multiplies it natively, else fp32), ``32``, ``bf16`` or ``16``;
            the network runs under :func:`engine.context.autocast_for`, the probabilities are fp32.

    Raises:
        UserError: Unreadable checkpoint, a checkpoint of another task, bad ``views`` or an unavailable device.
    """

    def __init__(self, checkpoint: Union[str, Path], device: str = "auto", views: Views = (1, 1),
                 precision: str = "auto") -> None:
        from engine import load_run
        from engine.context import precision_option

        self.views = _views(views)
        self.cfg, state_dict = load_run(checkpoint)
        if self.cfg.task != "video":
            raise UserError(f"{checkpoint}: checkpoint is for task {self.cfg.task!r}, not video")
        self.checkpoint = Path(checkpoint)
        self.device = select_device(device)
        self.precision = precision_option(precision, self.device)  # 32, bf16 or 16-mixed
        self.model = build_model_from_run(self.cfg, state_dict, self.device)
        self.options = video_options(self.cfg)
        self.classes = class_names(self.cfg)

    @classmethod
    def from_weights(cls, model: str, pretrained: Union[str, Path], device: str = "auto",
                     views: Optional[Views] = None, classes: Optional[Union[str, Sequence[str]]] = None,
                     precision: str = "auto", **protocol: Any) -> "Predictor":
        """A released weights file with its model's registry test protocol, no run needed.

        Args:
            model: Registry name or alias of the weights' model (``mvit``, ``timesformer``, ...).
            pretrained: The weights file, in any format the model's converters read.
            device, precision: As for the constructor.
            views: ``"TxS"``; default the registry protocol's (MViT-B: ``5x1``).
            classes: Class names (``kinetics400``, ``ucf101``, a file or a list); default the shipped list of the
                classifier's size.
            **protocol: ``num_frames``, ``stride``, ``crop_size``, ``short_side``, ``mean``, ``std``,
                ``model_args``, ``data`` (:func:`videovit.pretrained.protocol_config`).
        """
        from .pretrained import weights_run

        text = None if views is None else (views if isinstance(views, str) else "x".join(map(str, views)))
        run = weights_run(model, pretrained, classes=classes, views=text, **protocol)
        predictor = cls(run, device=device, views=run.cfg.data_args["val_views"], precision=precision)
        predictor.report = run.report
        return predictor

    @property
    def views_text(self) -> str:
        """The views as ``"TxS"``."""
        return f"{self.views[0]}x{self.views[1]}"

    def evaluate(self, split: str = "val", data: Optional[str] = None, data_dir: Optional[Union[str, Path]] = None,
                 batch_size: int = 4, num_workers: int = 2) -> Evaluation:
        """Multi-view evaluation of a split of the run's dataset (or of ``data`` / ``data_dir``).

        Args:
            split: ``val`` or ``train``.
            data: Dataset name; default the run's.
            data_dir: Dataset folder; default the run's.
            batch_size: Videos per forward pass (each brings ``T*S`` views).
            num_workers: DataLoader workers decoding in parallel.
        """
        cfg = dataclasses.replace(self.cfg, data=data or self.cfg.data,
                                  data_dir=str(data_dir) if data_dir else self.cfg.data_dir)
        vl = load_split(cfg, split)
        model, classes = self._model_for(vl, cfg.data_dir)  # the dataset's classes mapped onto the model's by name
        o = self.options
        ds = VideoViewDataset(vl, o.num_frames, o.stride, o.crop_size, self.views, o.mean, o.std, o.backend,
                              o.short_side)
        pairs = list(predict_views(model, ds, range(len(ds)), self.device, batch_size, num_workers,
                                   autocast=self._autocast))
        probs = torch.stack([p for p, _ in pairs]) if pairs else torch.zeros(0, len(classes))  # (N, K)
        labels = torch.tensor([y for _, y in pairs], dtype=torch.long)  # (N,)
        metrics = classification_metrics(probs, labels, len(classes))
        return Evaluation(probs, labels, metrics, classes, split, self.views_text, cfg.data, str(cfg.data_dir),
                          len(vl.missing))

    def _model_for(self, videos, where) -> Tuple[nn.Module, List[str]]:
        """The model scoring ``videos``' classes, and their names.

        The dataset's classes are matched to the model's by name (:func:`videovit.data.classes.match_classes`); when
        they are a subset (or another order), the model's logits are restricted to them, so the softmax is over the
        dataset's label set.

        Raises:
            UserError: Dataset classes that are not classes of the model (one line).
        """
        from .data.classes import match_classes

        cols = match_classes(self.classes, videos.classes, str(where))
        names = list(videos.classes) if cols is not None or not self.classes else self.classes
        if _placeholder_names(self.classes) and len(videos.classes) == len(self.classes):
            names = list(videos.classes)
        return (self.model if cols is None else _SelectClasses(self.model, cols)), names

    def predict_file(self, path: Union[str, Path], top_k: int = 5) -> Prediction:
        """Top-``k`` classes of one video file, with the sampled frames of its centre clip.

        Raises:
            UserError: The file cannot be decoded (the message names it).
        """
        path = Path(path)
        with self._autocast():  # probs come back fp32 (softmax of .float() logits)
            probs, frames, indices = predict_video(self.model, path, self.options, self.views, self.device)
        scores, idx = probs.topk(min(top_k, probs.numel()))
        top = [{"label": self._label(i), "index": int(i), "score": float(s)}
               for s, i in zip(scores.tolist(), idx.tolist())]
        return Prediction(path, top, probs, frames, indices)

    def _autocast(self):
        from engine.context import autocast_for

        return autocast_for(self.precision, self.device)

    def _label(self, index: int) -> str:
        return self.classes[index] if index < len(self.classes) else str(index)

    def predict_files(self, paths: Sequence[Union[str, Path]], top_k: int = 5):
        """Yield ``(path, Prediction or UserError)`` per file, so one undecodable file does not stop the others."""
        for path in paths:
            try:
                yield Path(path), self.predict_file(path, top_k)
            except UserError as e:
                yield Path(path), e


def _placeholder_names(names: Sequence[str]) -> bool:
    return bool(names) and list(names) == [str(i) for i in range(len(names))]


class _SelectClasses(nn.Module):
    """A classifier restricted to some of its classes: ``logits[:, cols]`` (softmax over that label set)."""

    def __init__(self, model: nn.Module, cols: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("cols", torch.as_tensor(list(cols), dtype=torch.long), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[:, self.cols.to(x.device)]  # (B, k)


def collect_videos(path: Union[str, Path]) -> List[Path]:
    """``[path]`` for a file, or the video files below a folder (sorted, any depth, by ``layouts.VIDEO_EXTS``).

    Raises:
        UserError: ``path`` does not exist, or the folder holds no video file.
    """
    from .data.layouts import VIDEO_EXTS

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
    if not files:
        raise UserError(f"{path}: no video files ({', '.join(VIDEO_EXTS)})")
    return files

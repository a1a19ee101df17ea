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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from backbones.runtime import exported_model
from engine.errors import UserError
from engine.heap import set_cpu_heap_on
from engine.progress import ItemProgress
from engine.pretrained import model_overrides

from .data.dataset import VideoViewDataset
from .data.decode import open_reader
from .data.samplers import parse_views, uniform_clips
from .data.transforms import eval_transform
from .task import VideoOptions, classification_metrics, load_split, score_views, video_options

__all__ = ["Predictor", "Evaluation", "Prediction", "FilePredictions", "select_device", "build_model_from_run",
           "predict_video", "class_names", "collect_videos", "shard", "score_views"]

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


def predict_video(model: Callable[[Tensor], Tensor], path: Path, opts: VideoOptions, views: Tuple[int, int],
                  device: torch.device, per_view: bool = False) -> Tuple[Tensor, np.ndarray, np.ndarray]:
    """Class probabilities of one video file (softmax averaged over ``views``) and the sampled frames.

    Args:
        model: A video classifier in ``eval()`` mode on ``device``; input ``(B, C, T, H, W)``.
        path: The video file.
        opts: Clip sampling, crop and normalisation of the run (:func:`videovit.task.video_options`).
        views: ``(T, S)``: ``T`` uniform clips x ``S`` spatial crops.
        device: Model device.
        per_view: Return the ``(T*S, K)`` per-view softmax instead of its mean.

    Returns:
        ``(probs (K,), frames, indices)`` with ``frames`` the uint8 ``(num_frames, H, W, 3)`` of the centre clip
        and ``indices`` their frame numbers in the file (repeated when a short video is stretched).

    Raises:
        UserError: The file cannot be decoded (the message names it).
    """
    reader = open_reader(path, opts.backend)
    clips = uniform_clips(len(reader), opts.num_frames, opts.stride, views[0])
    flat = reader.get_batch(np.concatenate(clips))  # (T*F, H, W, 3)
    frames = flat.reshape(len(clips), opts.num_frames, *flat.shape[1:])  # (T, F, H, W, 3)
    transform = eval_transform(opts.crop_size, views[1], opts.mean, opts.std, opts.short_side)
    batch = torch.cat([transform(f) for f in frames])  # (T*S, C, F, h, w)
    with torch.no_grad():
        probs = torch.as_tensor(model(batch.to(device))).float().softmax(-1).cpu()  # (T*S, K)
    return (probs if per_view else probs.mean(0)), frames[len(frames) // 2], clips[len(clips) // 2]


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
        view_probs: ``(N, T*S, K)`` softmax of every view (``probs`` is their mean), clip-major.
        paths: The ``N`` video files, in the split's order.
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
    view_probs: Optional[Tensor] = None
    paths: List[str] = dataclasses.field(default_factory=list)

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
        view_probs: ``(T*S, K)`` softmax of every view.
    """

    path: Path
    top: List[Dict[str, Any]]
    probs: Tensor
    frames: np.ndarray
    indices: np.ndarray
    view_probs: Optional[Tensor] = None


@dataclasses.dataclass
class FilePredictions:
    """What :meth:`Predictor.predict_all` returns on rank 0: every file of the input, in input order.

    Attributes:
        top: path -> ``[{"label", "index", "score"}, ...]`` of each decoded file.
        sheets: path -> the contact sheet PNG written for it.
        errors: path -> one-line error of each file that could not be decoded.
        scores: path -> ``(T*S, K)`` per-view softmax (for ``--save-predictions``).
        failed: The paths of ``errors`` in input order.
    """

    top: Dict[str, List[Dict[str, Any]]]
    sheets: Dict[str, str]
    errors: Dict[str, str]
    scores: Dict[str, np.ndarray]
    failed: List[str]


class Predictor:
    """A trained video model plus its run's test protocol (clip sampling, crop, mean/std, views).

    Args:
        checkpoint: Run folder (``checkpoints/best``, else ``last``) or ``.safetensors`` file.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Under ``torchrun`` each rank joins the process group
            (gloo on CPU, NCCL on CUDA with ``cuda:LOCAL_RANK``); :meth:`evaluate` and :meth:`shard` then split
            the videos over the ranks and :meth:`gather` collects the results on every rank.
        views: ``"TxS"`` or ``(T, S)``: clips x spatial crops averaged per video.
        precision: ``auto`` (bf16 where the device multiplies it natively, else fp32), ``32``, ``bf16`` or ``16``;
            the network runs under :func:`engine.context.autocast_for`, the probabilities are fp32.

    ``self.model`` may be replaced by any callable mapping a ``(B, C, T, H, W)`` tensor to ``(B, K)`` logits (an
    ONNX session wrapper, for instance); nothing here needs it to be an ``nn.Module``.

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
        self.dist = _join_ranks(device)
        self.device = self.dist.device if self.dist.distributed else select_device(device)
        self.precision = precision_option(precision, self.device)  # 32, bf16 or 16-mixed
        self.model = exported_model(checkpoint) or build_model_from_run(self.cfg, state_dict, self.device)
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

    @classmethod
    def from_model_file(cls, path: Union[str, Path], device: str = "auto", views: Optional[Views] = None,
                        precision: str = "32") -> "Predictor":
        """A ``vtk models export`` file (ONNX through onnxruntime, or TorchScript) with the frames, stride, crop,
        mean/std, class names and (unless ``views`` is given) views of its metadata
        (:func:`backbones.runtime.load_model_file`)."""
        from backbones.runtime import load_model_file

        run = load_model_file(path, "video")
        return cls(run, device=device, views=views or run.cfg.data_args["val_views"], precision=precision)

    @property
    def views_text(self) -> str:
        """The views as ``"TxS"``."""
        return f"{self.views[0]}x{self.views[1]}"

    def evaluate(self, split: str = "val", data: Optional[str] = None, data_dir: Optional[Union[str, Path]] = None,
                 batch_size: int = 4, num_workers: int = 2, cpu_heap: str = "retain") -> Evaluation:
        """Multi-view evaluation of a split of the run's dataset (or of ``data`` / ``data_dir``).

        Args:
            split: ``val`` or ``train``.
            data: Dataset name; default the run's.
            data_dir: Dataset folder; default the run's.
            batch_size: Videos per forward pass (each brings ``T*S`` views).
            num_workers: DataLoader workers decoding in parallel.
            cpu_heap: On the CPU, the C heap policy of this process and its workers
                (:func:`engine.heap.set_cpu_heap_on`; ``retain`` keeps freed memory for the next batch).
        """
        set_cpu_heap_on(self.device, cpu_heap)  # before the DataLoader forks its workers
        cfg = dataclasses.replace(self.cfg, data=data or self.cfg.data,
                                  data_dir=str(data_dir) if data_dir else self.cfg.data_dir)
        vl = load_split(cfg, split)
        model, classes = self._model_for(vl, cfg.data_dir)  # the dataset's classes mapped onto the model's by name
        o = self.options
        ds = VideoViewDataset(vl, o.num_frames, o.stride, o.crop_size, self.views, o.mean, o.std, o.backend,
                              o.short_side)
        mine = self.shard(range(len(ds)))
        with ItemProgress(len(mine), f"eval {split}", enabled=self.dist.is_main) as bar:
            with self._autocast():  # probabilities come back fp32 (softmax of .float() logits)
                local = _attempt(lambda: [(i, v.numpy(), y) for i, v, y in
                                          score_views(model, ds, mine, self.device, batch_size, num_workers,
                                                      bar)])
        rows = sorted((r for part in self.gather(local) for r in part), key=lambda r: r[0])  # split order
        V, K = self.views[0] * self.views[1], len(classes)
        view_probs = torch.from_numpy(np.stack([v for _, v, _ in rows])) if rows else torch.zeros(0, V, K)
        probs = view_probs.mean(1)  # (N, K): the softmax averaged over each video's views
        labels = torch.tensor([y for _, _, y in rows], dtype=torch.long)  # (N,)
        metrics = classification_metrics(probs, labels, len(classes))
        return Evaluation(probs, labels, metrics, classes, split, self.views_text, cfg.data, str(cfg.data_dir),
                          len(vl.missing), view_probs, [str(vl.samples[i][0]) for i, _, _ in rows])

    def shard(self, items: Sequence[Any]) -> List[Any]:
        """This rank's share of ``items`` (every ``world_size``-th from ``rank``; all of them in one process).

        Shards may be uneven and empty (3 videos on 2 ranks: 2 and 1; 1 video on 2 ranks: 1 and 0).
        """
        return list(items)[self.dist.rank::self.dist.world_size]

    def gather(self, obj: Any) -> List[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process).

        An ``_Failed`` from any rank is raised on every rank, so one rank's bad video never leaves the others
        waiting in a collective.
        """
        from engine.distributed import all_gather_object

        parts = all_gather_object(obj)
        for part in parts:
            if isinstance(part, _Failed):
                raise part.error
        return parts

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
            view_probs, frames, indices = predict_video(self.model, path, self.options, self.views, self.device,
                                                        per_view=True)
        probs = view_probs.mean(0)  # (K,)
        scores, idx = probs.topk(min(top_k, probs.numel()))
        top = [{"label": self._label(i), "index": int(i), "score": float(s)}
               for s, i in zip(scores.tolist(), idx.tolist())]
        return Prediction(path, top, probs, frames, indices, view_probs)

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

    def predict_all(self, files: Sequence[Path], top_k: int, sheet_for: Callable[[Path], Path],
                    on_result: Optional[Callable[[Path, List[Dict[str, Any]]], None]] = None,
                    on_error: Optional[Callable[[Path, str], None]] = None,
                    cpu_heap: str = "retain") -> Optional[FilePredictions]:
        """Predict this rank's share of ``files`` with a progress bar, write each contact sheet, merge on rank 0.

        Args:
            files: Every input file (each rank takes its :meth:`shard`).
            top_k: Classes kept per video.
            sheet_for: The contact sheet path of a file.
            on_result: Called with ``(path, top)`` as each file of this rank is predicted.
            on_error: Called with ``(path, one-line message)`` for each file that cannot be decoded.
            cpu_heap: On the CPU, the C heap policy (:func:`engine.heap.set_cpu_heap_on`).

        Returns:
            Every file's result in input order on rank 0 (or in one process); ``None`` on the other ranks.
        """
        from .report import write_contact_sheet

        set_cpu_heap_on(self.device, cpu_heap)
        mine = self.shard(files)
        top, sheets, errors, scores = {}, {}, {}, {}
        with ItemProgress(len(mine), "predict", enabled=self.dist.is_main) as bar:
            for path, result in self.predict_files(mine, top_k):
                bar.advance()
                if isinstance(result, UserError):
                    errors[str(path)] = " ".join(str(result).split())
                    if on_error is not None:
                        on_error(path, errors[str(path)])
                    continue
                top[str(path)], scores[str(path)] = result.top, result.view_probs.numpy()
                sheets[str(path)] = str(write_contact_sheet(result, sheet_for(path)))
                if on_result is not None:
                    on_result(path, result.top)
        if self.dist.distributed:  # every rank predicted its share; rank 0 merges them
            parts = self.gather((top, sheets, errors, scores))
            if not self.dist.is_main:
                return None
            top, sheets, errors, scores = (dict(x for part in parts for x in part[k].items()) for k in range(4))
        order = [str(f) for f in files]
        return FilePredictions({f: top[f] for f in order if f in top}, {f: sheets[f] for f in order if f in sheets},
                               errors, scores, [f for f in order if f in errors])


class _Failed:
    """A rank's exception, carried through :meth:`Predictor.gather` to every rank."""

    def __init__(self, error: BaseException) -> None:
        self.error = error if isinstance(error, UserError) else UserError(f"{type(error).__name__}: {error}")


def _attempt(work: Callable[[], Any]) -> Any:
    """``work()``, or a :class:`_Failed` under torchrun (raised on every rank by :meth:`Predictor.gather`)."""
    from engine.distributed import _active

    try:
        return work()
    except Exception as e:  # noqa: BLE001 - re-raised on every rank after the gather
        if not _active():
            raise
        return _Failed(e)


def _join_ranks(device: str):
    """The :class:`engine.distributed.DistInfo` of this process; joins the torchrun group when ``WORLD_SIZE > 1``."""
    import os

    from engine.distributed import DistInfo, setup

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if not _DEVICE_RE.match(str(device)):
        raise UserError(f"--device: {device!r} is not one of auto, cpu, cuda, cuda:N")
    return setup(device)


def shard(items: Sequence[Any], rank: int, world_size: int) -> List[Any]:
    """Every ``world_size``-th item from ``rank`` (uneven and empty shards allowed)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    return list(items)[rank::world_size]


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

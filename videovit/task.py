"""The video-recognition :class:`VideoTask` for :func:`engine.fit`, plus multi-view evaluation and prediction.

Training takes one random clip per video (optionally mixup / cutmix with a soft-target loss); evaluation averages
the softmax over ``T x S`` views per video (T uniformly spaced clips x S spatial crops), as in TimeSformer
(Bertasius et al., arXiv:2102.05095), ViViT (Arnab et al., arXiv:2103.15691) and MViT (Fan et al.,
arXiv:2104.11227), and reports top-1, top-5 and per-class accuracy.

Everything the data side needs lives in ``cfg.data_args`` (resolved once by :func:`resolve_data_args` and saved
in the run's ``config.yaml`` / checkpoint metadata): ``num_frames`` (mirrors ``model_args``), ``stride``,
``crop_size``, ``short_side``, ``min_scale``, ``hflip``, ``randaugment`` (``[n, m]``), ``mixup``, ``cutmix``,
``label_smoothing``, ``val_views`` (``"TxS"``), ``classes``, ``layout``, ``fold``, ``backend``, ``mean``, ``std``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine.errors import UserError

from .data.dataset import VideoClipDataset, VideoViewDataset
from .data.decode import VideoReader
from .data.layouts import VideoList, load_dataset
from .data.samplers import parse_views, uniform_clips
from .data.transforms import (KINETICS_MEAN, KINETICS_STD, MixupCutmix, eval_transform, soft_cross_entropy,
                              train_transform)

__all__ = ["FAMILIES", "SAMPLING", "SYNTH_MARKER", "VideoTask", "resolve_model_name", "resolve_data_args",
           "load_split", "predict_views", "classification_metrics", "predict_video"]

# `--model timesformer` means the family default; full registry names are accepted as they are.
FAMILIES = {
    "timesformer": "timesformer_base_patch16_224",
    "vivit": "vivit_base_16x2_224",
    "stam": "stam_16",
    "vtn": "vtn_vit_base",
    "mvit": "mvit_base_16x4",
}
# Clip sampling of each family's recipe: (num_frames, stride); stride 0 = frames spread over the whole video.
SAMPLING = {"timesformer": (8, 32), "vivit": (32, 2), "stam": (16, 0), "vtn": (16, 8), "mvit": (16, 4)}
SYNTH_MARKER = "vtk_synth.json"  # written by `vtk data synth`; carries dataset-specific defaults (hflip: false)


def resolve_model_name(name: str) -> str:
    """Map a family name (``timesformer``) to its registry default; other names pass through."""
    return FAMILIES.get(name, name)


def _family(model: str) -> str:
    return next((f for f in SAMPLING if model.startswith(f)), "timesformer")


def load_split(cfg, split: str) -> VideoList:
    """The :class:`VideoList` of ``split`` for ``cfg.data`` / ``cfg.data_dir`` / ``cfg.data_args``."""
    if not cfg.data_dir:
        raise UserError("--data-dir is required")
    args = {k: cfg.data_args[k] for k in ("layout", "fold", "train_csv", "val_csv") if k in cfg.data_args}
    return load_dataset(cfg.data, Path(cfg.data_dir), split, **args)


def resolve_data_args(cfg, train: Optional[VideoList] = None) -> None:
    """Fill the defaults of ``cfg.model_args`` / ``cfg.data_args`` in place (idempotent).

    Frames and crop size are shared by model and data; the class list and ``num_classes`` come from the training
    split; ``hflip`` defaults to the synthetic dataset's marker (its classes are direction-sensitive) or ``True``.
    """
    ma, da = cfg.model_args, cfg.data_args
    marker = Path(cfg.data_dir or ".") / SYNTH_MARKER
    defaults = json.loads(marker.read_text()).get("data_args", {}) if marker.is_file() else {}
    for key, value in defaults.items():
        da.setdefault(key, value)
    frames, stride = SAMPLING[_family(cfg.model)]
    ma.setdefault("num_frames", da.get("num_frames", frames))
    ma.setdefault("img_size", da.get("crop_size", 224))
    da.setdefault("num_frames", ma["num_frames"])
    da.setdefault("stride", stride)
    da.setdefault("crop_size", ma["img_size"])
    da.setdefault("hflip", True)
    if "classes" not in da:
        train = train if train is not None else load_split(cfg, "train")
        da["classes"] = list(train.classes)
    ma.setdefault("num_classes", len(da["classes"]))


@dataclass
class _Opts:
    """Typed view of ``data_args``."""

    num_frames: int
    stride: int
    crop_size: int
    mean: Sequence[float]
    std: Sequence[float]
    backend: str

    @classmethod
    def of(cls, cfg) -> "_Opts":
        da = cfg.data_args
        return cls(int(da["num_frames"]), int(da["stride"]), int(da["crop_size"]), da.get("mean", KINETICS_MEAN),
                   da.get("std", KINETICS_STD), da.get("backend", "auto"))


class VideoTask:
    """Video classification on Kinetics-400 / UCF101 / csv lists for :func:`engine.fit`.

    Args:
        model_factory: ``(name, **overrides) -> nn.Module``; defaults to ``videovit.create_model``.
    """

    monitor = "val/top1"
    monitor_mode = "max"

    def __init__(self, model_factory: Optional[Callable[..., nn.Module]] = None) -> None:
        self.model_factory = model_factory
        self.mixer: Optional[MixupCutmix] = None
        self.cfg = None

    def build_model(self, cfg) -> nn.Module:
        resolve_data_args(cfg)
        import videovit

        factory = videovit.create_model if self.model_factory is None else self.model_factory
        try:
            return factory(cfg.model, **cfg.model_args)
        except ValueError as e:  # a bad model name or override value is a user error (exit 2)
            raise UserError(f"--model {cfg.model}: {e}") from e

    def build_datasets(self, cfg) -> Tuple[Dataset, Optional[Dataset]]:
        self.cfg = cfg
        train_list = load_split(cfg, "train")
        resolve_data_args(cfg, train_list)
        o, da = _Opts.of(cfg), cfg.data_args
        ra = da.get("randaugment")
        transform = train_transform(o.crop_size, da.get("short_side"), (float(da.get("min_scale", 0.4)), 1.0),
                                    bool(da["hflip"]), tuple(ra) if ra else None, o.mean, o.std)
        train = VideoClipDataset(train_list, o.num_frames, o.stride, transform, cfg.seed, o.backend)
        mix, cut = float(da.get("mixup", 0.0)), float(da.get("cutmix", 0.0))
        smoothing = float(da.get("label_smoothing", 0.0))
        if mix > 0 or cut > 0 or smoothing > 0:
            self.mixer = MixupCutmix(len(da["classes"]), mix, cut, prob=1.0 if mix or cut else 0.0,
                                     label_smoothing=smoothing)
        try:
            val_list = load_split(cfg, "val")
        except UserError:
            return train, None
        views = parse_views(da.get("val_views", "1x1"))
        return train, VideoViewDataset(val_list, o.num_frames, o.stride, o.crop_size, views, o.mean, o.std,
                                       o.backend)

    def training_step(self, model: nn.Module, batch: Any, ctx: Any) -> Tuple[Tensor, Dict[str, float]]:
        clips, labels = batch  # (B, C, T, H, W), (B,)
        targets = labels
        if self.mixer is not None:
            clips, targets = self.mixer(clips, labels)  # soft targets (B, K)
        logits = model(clips)  # (B, K)
        loss = soft_cross_entropy(logits.float(), targets)
        return loss, {"top1": (logits.argmax(-1) == labels).float().mean().item()}

    def validate(self, model: nn.Module, dataset: Dataset, ctx: Any) -> Dict[str, float]:
        cfg = self.cfg or ctx.cfg
        probs, labels = [], []
        for p, y in predict_views(model, dataset, ctx.shard_indices(len(dataset)), ctx.device,
                                  batch_size=max(1, cfg.batch_size // ctx.world_size),
                                  num_workers=cfg.num_workers, autocast=ctx.autocast):
            probs.append(p)
            labels.append(y)
        if not probs:
            return ctx.reduce_mean({"top1": 0.0, "top5": 0.0}, {"top1": 0.0, "top5": 0.0})
        m = classification_metrics(torch.stack(probs), torch.tensor(labels), len(cfg.data_args["classes"]))
        n = float(len(labels))
        return ctx.reduce_mean({"top1": m["top1"] * n, "top5": m["top5"] * n}, {"top1": n, "top5": n})


def _collate_views(samples: List[Tuple[Tensor, int]]) -> Tuple[Tensor, Tensor]:
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


def predict_views(model: nn.Module, dataset: Dataset, indices: Sequence[int], device: torch.device,
                  batch_size: int = 1, num_workers: int = 0,
                  autocast: Optional[Callable] = None) -> Iterator[Tuple[Tensor, int]]:
    """Yield ``(probs, label)`` per video: the softmax averaged over the video's ``T*S`` views.

    Args:
        dataset: A :class:`VideoViewDataset` (items ``(views (V, C, T, H, W), label)``).
        indices: The videos to evaluate (e.g. ``ctx.shard_indices(len(dataset))``).
        device: Model device.
        batch_size: Videos per forward pass (each brings ``V`` views).
        num_workers: DataLoader workers decoding in parallel.
        autocast: A callable returning a context manager (``ctx.autocast``), or ``None``.
    """
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate_views)
    for views, labels in loader:
        B, V = views.shape[:2]
        with torch.no_grad(), (autocast() if autocast is not None else torch.autocast("cpu", enabled=False)):
            logits = model(views.flatten(0, 1).to(device))  # (B*V, K)
        probs = logits.float().softmax(-1).reshape(B, V, -1).mean(1).cpu()  # (B, K)
        yield from zip(probs, labels.tolist())


def classification_metrics(probs: Tensor, labels: Tensor, num_classes: int) -> Dict[str, Any]:
    """Top-1, top-5, mean per-class accuracy, per-class accuracy and the confusion matrix (rows = truth)."""
    N, K = probs.shape
    topk = probs.topk(min(5, K), dim=-1).indices  # (N, k)
    pred = topk[:, 0]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones(N, dtype=torch.long), accumulate=True)
    support = confusion.sum(1)
    per_class = (confusion.diag().float() / support.clamp(min=1)).tolist()
    present = [a for a, s in zip(per_class, support.tolist()) if s > 0]
    return {
        "top1": (pred == labels).float().mean().item(),
        "top5": (topk == labels[:, None]).any(-1).float().mean().item(),
        "mean_class_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_class": per_class,
        "support": support.tolist(),
        "confusion": confusion.tolist(),
    }


def predict_video(model: nn.Module, path: Path, cfg, views: Tuple[int, int], device: torch.device
                  ) -> Tuple[Tensor, np.ndarray, np.ndarray]:
    """Class probabilities of one video file (softmax averaged over ``views``) and the sampled frames.

    Returns:
        ``(probs (K,), frames, indices)`` with ``frames`` the uint8 ``(num_frames, H, W, 3)`` of the centre clip
        and ``indices`` their frame numbers in the file (repeated when a short video is stretched).

    Raises:
        UserError: The file cannot be decoded (the message names it).
    """
    o = _Opts.of(cfg)
    reader = VideoReader(path, backend=o.backend)
    clips = uniform_clips(len(reader), o.num_frames, o.stride, views[0])
    flat = reader.get_batch(np.concatenate(clips))  # (T*F, H, W, 3)
    frames = flat.reshape(len(clips), o.num_frames, *flat.shape[1:])
    transform = eval_transform(o.crop_size, views[1], o.mean, o.std)
    batch = torch.cat([transform(f) for f in frames])  # (T*S, C, F, h, w)
    with torch.no_grad():
        probs = model(batch.to(device)).float().softmax(-1).mean(0).cpu()  # (K,)
    return probs, frames[len(frames) // 2], clips[len(clips) // 2]

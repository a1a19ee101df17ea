"""The video-recognition :class:`VideoTask` for :func:`engine.fit`, plus multi-view scoring and metrics.

Training takes one random clip per video (optionally mixup / cutmix with a soft-target loss); evaluation averages
the softmax over ``T x S`` views per video (T uniformly spaced clips x S spatial crops), as in TimeSformer
(Bertasius et al., arXiv:2102.05095), ViViT (Arnab et al., arXiv:2103.15691) and MViT (Fan et al.,
arXiv:2104.11227), and reports top-1, top-5 and per-class accuracy.

Everything the data side needs lives in ``cfg.data_args`` (filled once by :meth:`VideoTask.resolve_config` from
the model's registry recipe and saved in the run's ``config.yaml`` / checkpoint metadata): ``num_frames`` (mirrors
``model_args``), ``stride``, ``crop_size``, ``short_side``, ``min_scale``, ``hflip``, ``randaugment`` (``[n, m]``),
``mixup``, ``cutmix``, ``label_smoothing``, ``val_views`` (``"TxS"``), ``classes``, ``layout``, ``fold``,
``backend``, ``mean``, ``std``. Multi-view evaluation and prediction of a trained run are in
:mod:`videovit.inference`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine.choices import accepted_keywords, check_choice, check_keys
from engine.errors import UserError
from engine.pretrained import build_run_model, record_pretrained

from .data.dataset import SkipUnreadable, Unreadable, VideoClipDataset, VideoViewDataset
from .data.layouts import KINETICS_LAYOUTS, MissingSplit, VideoList, load_dataset
from .data.samplers import parse_views
from .data.transforms import KINETICS_MEAN, KINETICS_STD, MixupCutmix, soft_cross_entropy, train_transform

__all__ = ["SYNTH_MARKER", "DATASETS", "DATA_KEYS", "VideoTask", "VideoOptions", "video_options", "model_recipe",
           "load_split", "check_data_args", "predict_views", "score_views", "classification_metrics"]

DATASETS = ("kinetics400", "ucf101", "csv")
# Every key ``cfg.data_args`` may hold (``--data-arg KEY=VALUE``, the CLI's own options, recipes, run configs).
DATA_KEYS = ("num_frames", "stride", "crop_size", "short_side", "eval_short_side", "min_scale", "hflip",
             "randaugment", "mixup", "cutmix", "label_smoothing", "val_views", "classes", "num_classes", "layout",
             "fold", "train_csv", "val_csv", "test_csv", "backend", "mean", "std")
SYNTH_MARKER = "vtk_synth.json"  # written by `vtk data synth`; carries dataset-specific defaults (hflip: false)
# The recipe of a model whose registry entry has no video metadata (TimeSformer's 8 frames x stride 32 at 224 px).
_FALLBACK_RECIPE = dict(num_frames=8, stride=32, crop_size=224, mean=KINETICS_MEAN, std=KINETICS_STD)


def model_recipe(meta: Dict[str, Any]) -> Dict[str, Any]:
    """``num_frames``, ``stride``, ``crop_size``, ``mean``, ``std`` of a model's test protocol.

    Args:
        meta: ``videovit.registry.metadata(name)`` (keys ``num_frames``, ``mean``, ``std``, ``protocol.stride``,
            ``protocol.crop_size``); missing keys fall back to TimeSformer's recipe and the Kinetics mean/std.
    """
    protocol = meta.get("protocol", {})
    recipe = dict(_FALLBACK_RECIPE)
    recipe.update({k: meta[k] for k in ("num_frames", "mean", "std") if k in meta})
    recipe.update({k: protocol[k] for k in ("stride", "crop_size") if k in protocol})
    return {**recipe, "mean": list(recipe["mean"]), "std": list(recipe["std"])}


def load_split(cfg, split: str, classes: Optional[Sequence[str]] = None) -> VideoList:
    """The :class:`VideoList` of ``split`` for ``cfg.data`` / ``cfg.data_dir`` / ``cfg.data_args``.

    Args:
        classes: The training classes: every label of ``split`` must be one of them (``file:line`` otherwise).
    """
    if not cfg.data_dir:
        raise UserError("--data-dir is required")
    keys = ("layout", "fold", "train_csv", "val_csv", "test_csv", "num_classes")
    args = {k: cfg.data_args[k] for k in keys if k in cfg.data_args}
    from .data.prepare import apply_manifest  # a prepared copy: drop the videos its manifest lists as corrupt

    vl = apply_manifest(load_dataset(cfg.data, Path(cfg.data_dir), split, classes=classes, **args), cfg.data_dir)
    if classes is not None:
        _check_split_classes(vl, classes, split, cfg.data_dir)
    return vl


def _check_split_classes(vl: VideoList, classes: Sequence[str], split: str, where: str) -> None:
    """Every label of ``vl`` indexes ``classes``, and names the same class (layouts that name their classes)."""
    bad = next(((p, y) for p, y in vl.samples if not 0 <= y < len(classes)), None)
    if bad is None and vl.layout != "csv":
        bad = next(((p, y) for p, y in vl.samples if y >= len(vl.classes) or vl.classes[y] != classes[y]), None)
    if bad is not None:
        name = vl.classes[bad[1]] if 0 <= bad[1] < len(vl.classes) else bad[1]
        raise UserError(f"{bad[0]}: the {split} label {name!r} is not one of the {len(classes)} training classes "
                        f"of {where}")


def _number(da: Dict[str, Any], key: str, option: str, low: float, high: float = math.inf,
            high_open: bool = False, low_open: bool = False) -> None:
    """``da[key]`` (when present) is a finite number in the range; else a one-line :class:`UserError`."""
    if key not in da or da[key] is None:
        return
    try:
        value = float(da[key])
    except (TypeError, ValueError):
        raise UserError(f"{option}: expected a number, got {da[key]!r}") from None
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
        raise UserError(f"{option}: {da[key]!r} is out of range, must be in {lo}{low:g}, {high:g}{hi}")


def check_data_args(da: Dict[str, Any]) -> None:
    """Reject unknown ``data_args`` keys (listing :data:`DATA_KEYS`) and out-of-range values, one line each.

    Raises:
        UserError: e.g. ``--mixup: -1.0 is out of range, must be in [0, inf)``, ``--data-arg: 'bogus' is not a
            known key, i.e. one of ...``.
    """
    check_keys("--data-arg", list(da), DATA_KEYS)
    _number(da, "mixup", "--mixup", 0.0)  # Beta(alpha, alpha); 0 turns it off
    _number(da, "cutmix", "--cutmix", 0.0)
    _number(da, "label_smoothing", "--label-smoothing", 0.0, 1.0, high_open=True)
    _number(da, "min_scale", "--data-arg min_scale", 0.0, 1.0, low_open=True)
    _number(da, "stride", "--stride", 0.0)
    for key, option in (("num_frames", "--num-frames"), ("crop_size", "--img-size"), ("num_classes",
                                                                                     "--data-arg num_classes")):
        _number(da, key, option, 1.0)
    if "val_views" in da:
        try:
            parse_views(da["val_views"])
        except ValueError as e:
            raise UserError(f"--val-views: {e}") from None
    ra = da.get("randaugment")
    if ra is not None and (not isinstance(ra, (list, tuple)) or len(ra) != 2 or min(ra) < 0):
        raise UserError(f"--randaugment: expected N,M with N, M >= 0, got {ra!r}")
    if "backend" in da:
        check_choice("--data-arg backend", da["backend"], ("auto", "seek", "decord", "pyav"))
    if "layout" in da:
        check_choice("--data-arg layout", da["layout"], KINETICS_LAYOUTS)


@dataclass
class VideoOptions:
    """Typed view of the data side of a resolved config (``cfg.data_args``).

    Attributes:
        num_frames: Frames per clip.
        stride: Frame step inside a clip (``0``: spread over the whole video).
        crop_size: Square crop edge in pixels.
        mean: Per-channel normalisation mean (RGB, in [0, 1]).
        std: Per-channel normalisation std.
        backend: Decoder backend (``auto``: PyAV seek with decord / PyAV fallback, ``seek``, ``decord``, ``pyav``).
        short_side: Test-time short side before cropping (``data_args.eval_short_side``; ``None``: ``crop_size``).
    """

    num_frames: int
    stride: int
    crop_size: int
    mean: Sequence[float]
    std: Sequence[float]
    backend: str
    short_side: Optional[int] = None


def video_options(cfg) -> VideoOptions:
    """The :class:`VideoOptions` of a config resolved by :meth:`VideoTask.resolve_config`.

    Runs saved before ``mean``/``std`` were recorded in ``data_args`` were trained with the Kinetics statistics,
    which are the fallback here.
    """
    da = cfg.data_args
    return VideoOptions(int(da["num_frames"]), int(da["stride"]), int(da["crop_size"]), da.get("mean", KINETICS_MEAN),
                        da.get("std", KINETICS_STD), da.get("backend", "auto"), da.get("eval_short_side"))


def _synth_defaults(data_dir: Path) -> Dict[str, Any]:
    """The ``data_args`` defaults of a folder written by ``vtk data synth`` (its ``vtk_synth.json``), else ``{}``."""
    marker = data_dir / SYNTH_MARKER
    if not marker.is_file():
        return {}
    try:
        return dict(json.loads(marker.read_text()).get("data_args", {}))
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{marker}: unreadable synthetic-set marker ({' '.join(str(e).split())})") from None


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
        self._warned: set = set()  # unreadable validation videos already reported

    def resolve_config(self, cfg):
        """Finalise ``cfg`` in place before the engine writes ``config.yaml`` (idempotent); returns it.

        A family name (``--model mvit``) becomes its registry name. Frames, stride, crop size and mean/std come
        from the model's registry recipe (``videovit.registry.metadata``: TimeSformer 8x32 with the Kinetics
        mean/std, ViViT 32x2 with mean/std 0.5, ...) unless ``data_args`` / ``model_args`` give them; frames and
        crop size are shared by model and data. The class list and ``num_classes`` come from the training split;
        ``hflip`` defaults to the synthetic dataset's marker (its classes are direction-sensitive) or ``True``.

        Raises:
            UserError: No or unknown ``--data``, no ``--data-dir``, unknown ``--model``.
        """
        if not cfg.data:
            raise UserError(f"--data is required ({', '.join(DATASETS)})")
        check_choice("--data", cfg.data, DATASETS)
        if not cfg.data_dir:
            raise UserError("--data-dir is required")
        check_data_args(cfg.data_args)
        cfg.model = self._registry_name(cfg.model)
        recipe = model_recipe(self._metadata(cfg.model))
        ma, da = cfg.model_args, cfg.data_args
        if cfg.resume and "classes" in da and "mean" not in da:  # a run resolved before mean/std were recorded
            recipe.update(mean=list(KINETICS_MEAN), std=list(KINETICS_STD))
        for key, value in _synth_defaults(Path(cfg.data_dir)).items():
            da.setdefault(key, value)
        ma.setdefault("num_frames", da.get("num_frames", recipe["num_frames"]))
        ma.setdefault("img_size", da.get("crop_size", recipe["crop_size"]))
        da.setdefault("num_frames", ma["num_frames"])
        da.setdefault("crop_size", ma["img_size"])
        for key in ("stride", "mean", "std"):
            da.setdefault(key, recipe[key])
        da.setdefault("hflip", True)
        if "classes" not in da:
            da["classes"] = list(load_split(cfg, "train").classes)
        ma.setdefault("num_classes", len(da["classes"]))
        return record_pretrained(cfg)

    def _registry_name(self, name: str) -> str:
        import videovit

        return videovit.registry.resolve(name)

    def _metadata(self, name: str) -> Dict[str, Any]:
        """The registry metadata of ``name``; empty for a custom ``model_factory``'s own names."""
        import videovit

        if self.model_factory is not None and not videovit.registry.is_model(name):
            return {}
        try:
            return videovit.registry.metadata(name)
        except ValueError as e:  # unknown model: a user error naming close registry names
            raise UserError(f"--model {name}: {e}") from None

    def build_model(self, cfg) -> nn.Module:
        self.resolve_config(cfg)
        import videovit

        factory = videovit.create_model if self.model_factory is None else self.model_factory
        try:
            return build_run_model(factory, cfg)  # loads model_args.pretrained on a fresh start, never on resume
        except ValueError as e:  # a bad model name or override value is a user error (exit 2)
            raise UserError(f"--model {cfg.model}: {e}") from e
        except TypeError as e:  # an override the model does not take: name it and list the ones it does
            key = _unexpected_keyword(e)
            if key is None:
                raise
            valid = _model_keywords(factory, cfg.model)
            if valid is None:
                raise UserError(f"--model-arg: {key!r} is not an argument of {cfg.model}") from None
            check_keys("--model-arg", [key], valid)
            raise

    def build_datasets(self, cfg) -> Tuple[Dataset, Optional[Dataset]]:
        """The training clips and the validation views (``None`` without a validation split).

        Every label of both splits is checked against the run's classes here, before the first step.

        Raises:
            UserError: A label that is not a training class (``file:line`` where the layout has lines).
        """
        self.cfg = self.resolve_config(cfg)
        o, da = video_options(cfg), cfg.data_args
        train_list = load_split(cfg, "train", da["classes"])
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
            val_list = load_split(cfg, "val", da["classes"])
        except MissingSplit:  # no validation split at all; a malformed one is an error
            return train, None
        views = parse_views(da.get("val_views", "1x1"))
        return train, VideoViewDataset(val_list, o.num_frames, o.stride, o.crop_size, views, o.mean, o.std,
                                       o.backend, o.short_side)

    def training_step(self, model: nn.Module, batch: Any, ctx: Any) -> Tuple[Tensor, Dict[str, float]]:
        clips, labels = batch  # (B, C, T, H, W), (B,)
        targets = labels
        if self.mixer is not None:
            clips, targets = self.mixer(clips, labels)  # soft targets (B, K)
        logits = model(clips)  # (B, K)
        loss = soft_cross_entropy(logits.float(), targets)
        return loss, {"top1": (logits.argmax(-1) == labels).float().mean().item()}

    def validate(self, model: nn.Module, dataset: Dataset, ctx: Any) -> Dict[str, float]:
        """Top-1 / top-5 over this rank's shard, reduced over ranks, and ``skipped``: the number of validation
        videos that could not be decoded (skipped with a warning line, never fatal)."""
        cfg = self.cfg or ctx.cfg
        probs, labels, skipped = [], [], []
        for p, y in predict_views(model, SkipUnreadable(dataset), ctx.shard_indices(len(dataset)), ctx.device,
                                  batch_size=max(1, cfg.batch_size // ctx.world_size),
                                  num_workers=cfg.num_workers, autocast=ctx.autocast, on_skip=skipped.append):
            probs.append(p)
            labels.append(y)
        self._warn_skipped(skipped, ctx)
        # the count is summed over ranks: each rank's weight is 1 / world_size, so the "mean" is the total
        total = {"skipped": float(len(skipped))}, {"skipped": 1.0 / ctx.world_size}
        if not probs:
            m = {"top1": 0.0, "top5": 0.0}
            return ctx.reduce_mean({**m, **total[0]}, {**m, **total[1]})
        m = classification_metrics(torch.stack(probs), torch.tensor(labels), len(cfg.data_args["classes"]))
        n = float(len(labels))
        return ctx.reduce_mean({"top1": m["top1"] * n, "top5": m["top5"] * n, **total[0]},
                               {"top1": n, "top5": n, **total[1]})

    def _warn_skipped(self, skipped: List[Unreadable], ctx: Any) -> None:
        """One stderr line per unreadable validation video, the first time it is skipped in this run."""
        for s in skipped:
            if s.path not in self._warned:
                self._warned.add(s.path)
                print(f"vtk: warning: step {ctx.step}: validation skips an unreadable video (counted in "
                      f"val/skipped): {' '.join(s.message.split())}", file=sys.stderr, flush=True)


def _unexpected_keyword(e: TypeError) -> Optional[str]:
    """The keyword of ``"... got an unexpected keyword argument 'bogus'"``, else ``None``."""
    m = re.search(r"unexpected keyword argument '([^']+)'", str(e))
    return m.group(1) if m else None


def _model_keywords(factory: Callable[..., nn.Module], name: str) -> Optional[List[str]]:
    """The constructor keywords of ``name``'s model class (found by building its tiny variant), or ``None``."""
    import videovit

    try:
        tiny = videovit.registry.tiny_overrides(name) if videovit.registry.is_model(name) else {}
        keys = accepted_keywords(type(factory(name, **tiny)), exclude=("self",))
    except Exception:  # noqa: BLE001 - only for the message: fall back to not listing
        return None
    return None if keys is None else sorted(keys | {"pretrained"})


class _Tagged(Dataset):
    """``dataset[i]`` as ``(*item, i)``: each item carries its index through the DataLoader."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        return item if isinstance(item, Unreadable) else (*item, i)


def _collate_views(samples: List[Any]) -> Tuple[Optional[Tensor], Tensor, List[int], List[Unreadable]]:
    """``(views (B, V, C, T, H, W) or None, labels (B,), indices, unreadable)``: the :class:`Unreadable` apart."""
    bad = [s for s in samples if isinstance(s, Unreadable)]
    good = [s for s in samples if not isinstance(s, Unreadable)]
    views = torch.stack([s[0] for s in good]) if good else None
    return views, torch.tensor([s[1] for s in good], dtype=torch.long), [s[2] for s in good], bad


def score_views(model: Callable[[Tensor], Tensor], dataset: Dataset, indices: Sequence[int], device: torch.device,
                batch_size: int = 1, num_workers: int = 0, progress: Any = None,
                autocast: Optional[Callable] = None,
                on_skip: Optional[Callable[[Unreadable], Any]] = None) -> Iterator[Tuple[int, Tensor, int]]:
    """Yield ``(index, view_probs (V, K), label)`` per readable video of ``indices``: the softmax of each view.

    Args:
        model: Maps ``(B*V, C, T, H, W)`` to logits ``(B*V, K)``; any callable (module or exported runtime).
        dataset: A :class:`VideoViewDataset` (items ``(views (V, C, T, H, W), label)``); its decoders are opened
            inside each DataLoader worker, never before the fork. Undecodable videos travel as
            :class:`Unreadable` items (a worker's raise would carry its traceback into the message).
        indices: The videos to score, in order (e.g. this rank's shard).
        device: Where the input goes.
        batch_size: Videos per forward pass (each brings ``V`` views).
        num_workers: DataLoader workers decoding in parallel.
        progress: An :class:`engine.progress.ItemProgress` advanced by one per video (skipped ones included).
        autocast: A callable returning a context manager for the forward pass (``ctx.autocast``), or ``None``.
        on_skip: Receives each :class:`Unreadable` item (those videos yield nothing); ``None`` raises its error.

    Raises:
        UserError: An unreadable video without ``on_skip`` (its one-line message, raised in this process even when
            a DataLoader worker decoded it).
    """
    indices = list(indices)
    if not indices:
        return
    base = dataset.dataset if isinstance(dataset, SkipUnreadable) else dataset
    loader = DataLoader(Subset(SkipUnreadable(_Tagged(base)), indices), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate_views)
    for views, labels, idx, bad in loader:
        for item in bad:
            if on_skip is None:
                raise UserError(item.message)
            on_skip(item)
        if views is not None:
            B, V = views.shape[:2]
            with torch.no_grad(), (autocast() if autocast is not None else contextlib.nullcontext()):
                logits = torch.as_tensor(model(views.flatten(0, 1).to(device)))  # (B*V, K)
            probs = logits.float().softmax(-1).reshape(B, V, -1).cpu()  # (B, V, K)
            yield from zip(idx, probs, labels.tolist())
        if progress is not None:
            progress.advance(len(idx) + len(bad))


def predict_views(model: nn.Module, dataset: Dataset, indices: Sequence[int], device: torch.device,
                  batch_size: int = 1, num_workers: int = 0, autocast: Optional[Callable] = None,
                  on_skip: Optional[Callable[[Unreadable], Any]] = None) -> Iterator[Tuple[Tensor, int]]:
    """Yield ``(probs (K,), label)`` per video: the softmax averaged over the video's ``T*S`` views (see
    :func:`score_views` for the arguments)."""
    for _, view_probs, label in score_views(model, dataset, indices, device, batch_size, num_workers,
                                            autocast=autocast, on_skip=on_skip):
        yield view_probs.mean(0), label


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

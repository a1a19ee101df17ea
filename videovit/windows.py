"""Long videos: slide a window over the file and classify each window (``vtk video predict --window S --hop S``).

Each window of ``window`` seconds, every ``hop`` seconds, is scored like a whole short video in
:func:`videovit.inference.predict_video`: ``T`` uniform clips x ``S`` crops inside the window (the run's clip
sampling, stretched when the window is shorter than one clip), softmax averaged over the views. The file is
decoded once, front to back (:func:`videovit.data.decode.iter_frames`); only the frames some window samples are
converted and kept, and a window's frames are dropped as soon as no later window needs them, so memory is bounded by
the frames of the windows that overlap (about ``ceil(window / hop) * T * num_frames``), never by the video's length.

A file whose tail does not decode yields the windows before the point where decoding stopped, and
:attr:`Timeline.stopped` says where.

Outputs (:func:`write_timeline`): ``<name>.timeline.json`` (every window's top-k), ``<name>.timeline.csv`` (one row
per window: start/end seconds and top-k labels and scores) and ``<name>.timeline.png`` (the probability of the
top classes over time).

Example::

    >>> from videovit.inference import Predictor
    >>> from videovit.windows import predict_timeline, write_timeline
    >>> p = Predictor("runs/mvit", views="1x1")
    >>> tl = predict_timeline(p, "match.mp4", window=2.0, hop=1.0)
    >>> write_timeline(tl, "out/match")
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from engine.errors import UserError
from engine.io import atomic_savefig, atomic_write_json, atomic_write_text

from .data.decode import DecodeStopped, iter_frames, stream_info
from .data.samplers import uniform_clips
from .data.transforms import eval_transform

__all__ = ["Window", "Timeline", "plan_windows", "predict_timeline", "write_timeline", "plot_timeline"]

PathLike = Union[str, Path]


@dataclasses.dataclass(frozen=True)
class Window:
    """Frames ``[start, stop)`` of the video."""

    start: int
    stop: int


def plan_windows(frames: int, fps: float, window: float, hop: float, path: PathLike = "video") -> List[Window]:
    """Windows of ``window`` seconds every ``hop`` seconds covering the video; the last one ends at the last frame.

    Raises:
        UserError: ``window`` or ``hop`` not positive, ``hop`` shorter than a frame, or a window longer than the
            video (the message names the option, or the file with its length).
    """
    for option, value in (("--window", window), ("--hop", hop)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"{option}: must be a positive number of seconds, got {value}")
    duration = frames / fps
    if window > duration + 0.5 / fps:
        raise UserError(f"{path}: --window {window:g} s is longer than the video ({duration:.2f} s, {frames} "
                        f"frames at {fps:g} fps)")
    size, step = min(frames, max(1, round(window * fps))), round(hop * fps)
    if step < 1:
        raise UserError(f"--hop: {hop:g} s is shorter than one frame at {fps:g} fps")
    starts = list(range(0, frames - size + 1, step))
    if starts[-1] + size < frames:  # the tail: one more window that ends with the video
        starts.append(frames - size)
    return [Window(s, s + size) for s in starts]


@dataclasses.dataclass
class Timeline:
    """What :func:`predict_timeline` returns.

    Attributes:
        path: The video.
        fps: Frame rate from the container.
        frames: Frame count from the container.
        window: Window length in seconds.
        hop: Window step in seconds.
        windows: One record per predicted window: ``start``/``end`` (seconds), ``start_frame``/``end_frame``
            (``[start, end)``), ``top`` (``[{"label", "index", "score"}]``).
        probs: ``(W, K)`` class probabilities of the predicted windows.
        classes: Class names.
        planned: Windows planned (``len(windows)`` when the whole file decoded).
        stopped: Where decoding stopped (a :class:`DecodeStopped` message), else ``None``.
        max_cached_frames: The most decoded frames held at once (the memory bound in frames).
    """

    path: Path
    fps: float
    frames: int
    window: float
    hop: float
    windows: List[Dict[str, Any]]
    probs: torch.Tensor
    classes: List[str]
    planned: int
    stopped: Optional[str] = None
    stopped_frame: Optional[int] = None
    max_cached_frames: int = 0

    def record(self) -> Dict[str, Any]:
        """The JSON record (everything but ``probs``)."""
        return {"video": str(self.path), "fps": self.fps, "frames": self.frames, "window_s": self.window,
                "hop_s": self.hop, "planned_windows": self.planned, "predicted_windows": len(self.windows),
                "stopped": self.stopped, "stopped_frame": self.stopped_frame, "windows": self.windows}


def _window_frames(w: Window, num_frames: int, stride: int, clips: int) -> np.ndarray:
    """``(T, F)`` frame numbers of the ``T`` uniform clips inside window ``w``."""
    return np.stack(uniform_clips(w.stop - w.start, num_frames, stride, clips)) + w.start


def _iter_windows(path: Path, plan: Sequence[Window], needs: Sequence[np.ndarray], frames: int, fps: float,
                  stats: Dict[str, Any]) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(window index, uint8 (T, F, H, W, 3))`` in order, decoding the file once and dropping frames early.

    ``stats["max_cached"]`` records the most frames held; a :class:`DecodeStopped` ends the iteration.
    """
    ends = [int(n.max()) for n in needs]
    firsts = [int(n.min()) for n in needs]
    cache: Dict[int, np.ndarray] = {}
    k = 0
    for index, frame in iter_frames(path, np.concatenate([n.ravel() for n in needs]), frames, fps):
        cache[index] = frame
        stats["max_cached"] = max(stats["max_cached"], len(cache))
        while k < len(plan) and ends[k] <= index:
            yield k, np.stack([cache[int(i)] for i in needs[k].ravel()]).reshape(*needs[k].shape, *frame.shape)
            k += 1
            keep = min(firsts[k:], default=index + 1)
            for i in [i for i in cache if i < keep]:
                del cache[i]


def predict_timeline(predictor: Any, path: PathLike, window: float, hop: Optional[float] = None, top_k: int = 5,
                     progress: Any = None) -> Timeline:
    """Classify every window of ``path`` with ``predictor`` (a :class:`videovit.inference.Predictor`).

    Args:
        predictor: Supplies ``model`` (any callable ``(B, C, T, H, W) -> (B, K)``), ``options`` (clip sampling,
            crop, mean/std), ``views`` ``(T, S)``, ``device`` and ``classes``.
        path: The video file.
        window: Window length in seconds.
        hop: Seconds between window starts (default ``window``).
        top_k: Labels kept per window.
        progress: An :class:`engine.progress.ItemProgress` (``set_total``, ``advance``), or ``None``.

    Raises:
        UserError: Bad ``window``/``hop`` or unreadable file (:func:`plan_windows`, :func:`stream_info`).
    """
    path = Path(path)
    hop = window if hop is None else hop
    frames, fps = stream_info(path)
    plan = plan_windows(frames, fps, window, hop, path)
    o, (T, S) = predictor.options, predictor.views
    needs = [_window_frames(w, o.num_frames, o.stride, T) for w in plan]
    transform = eval_transform(o.crop_size, S, o.mean, o.std, o.short_side)
    records, probs, stats = [], [], {"max_cached": 0}
    stopped = stopped_frame = None
    if progress is not None:
        progress.set_total(len(plan))
    try:
        for k, clips in _iter_windows(path, plan, needs, frames, fps, stats):
            batch = torch.cat([transform(c) for c in clips])  # (T*S, C, F, h, w)
            with torch.no_grad():
                p = torch.as_tensor(predictor.model(batch.to(predictor.device))).float().softmax(-1).mean(0).cpu()
            probs.append(p)  # (K,)
            records.append(_record(plan[k], fps, p, predictor.classes, top_k))
            if progress is not None:
                progress.advance()
    except DecodeStopped as e:
        stopped, stopped_frame = str(e), e.frame
    K = len(predictor.classes)
    return Timeline(path, fps, frames, float(window), float(hop), records,
                    torch.stack(probs) if probs else torch.zeros(0, K), list(predictor.classes), len(plan), stopped,
                    stopped_frame, stats["max_cached"])


def _record(w: Window, fps: float, probs: torch.Tensor, classes: Sequence[str], top_k: int) -> Dict[str, Any]:
    scores, idx = probs.topk(min(top_k, probs.numel()))
    top = [{"label": classes[i] if i < len(classes) else str(i), "index": int(i), "score": float(s)}
           for s, i in zip(scores.tolist(), idx.tolist())]
    return {"start": round(w.start / fps, 4), "end": round(w.stop / fps, 4), "start_frame": w.start,
            "end_frame": w.stop, "top": top}


def _csv(tl: Timeline) -> str:
    import csv

    k = max((len(r["top"]) for r in tl.windows), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["start_s", "end_s", "start_frame", "end_frame"] +
                    [f"{c}{r}" for r in range(1, k + 1) for c in ("label", "score")])
    for r in tl.windows:
        row = [r["start"], r["end"], r["start_frame"], r["end_frame"]]
        writer.writerow(row + [v for t in r["top"] for v in (t["label"], f"{t['score']:.6f}")])
    return buf.getvalue()


def plot_timeline(tl: Timeline, path: PathLike, classes_shown: int = 5) -> Path:
    """PNG of the probability of the ``classes_shown`` leading classes (top-1 of some window first) over time."""
    from .report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    probs = tl.probs.numpy()
    if len(probs):
        mids = np.array([(r["start"] + r["end"]) / 2 for r in tl.windows])
        winners = list(dict.fromkeys(probs.argmax(1).tolist()))  # top-1 classes in order of appearance
        ranked = winners + [int(i) for i in probs.mean(0).argsort()[::-1] if int(i) not in winners]
        for c in ranked[:classes_shown]:
            ax.step(mids, probs[:, c], where="mid", label=tl.classes[c] if c < len(tl.classes) else str(c))
        ax.legend(fontsize=8, loc="upper right", ncol=min(classes_shown, 3))
    if tl.stopped_frame is not None:
        ax.axvline(tl.stopped_frame / tl.fps, color="red", linestyle="--", label="decoding stopped")
    ax.set_xlim(0, tl.frames / tl.fps)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(f"{tl.path.name}: {len(tl.windows)} windows of {tl.window:g} s every {tl.hop:g} s", fontsize=9)
    fig.tight_layout()
    try:
        return atomic_savefig(fig, path)
    finally:
        plt.close(fig)


def write_timeline(tl: Timeline, prefix: PathLike) -> Tuple[Path, Path, Path]:
    """Write ``<prefix>.timeline.json``, ``.csv`` and ``.png`` (each atomic); returns the three paths."""
    prefix = Path(prefix)
    base = prefix.with_name(prefix.name + ".timeline")
    js = atomic_write_json(base.with_name(base.name + ".json"), tl.record())
    cs = atomic_write_text(base.with_name(base.name + ".csv"), _csv(tl))
    png = plot_timeline(tl, base.with_name(base.name + ".png"))
    return js, cs, png

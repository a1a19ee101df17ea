"""The video half of ``vtk quickstart``: a small TimeSformer trained on a generated motion set, then evaluated.

The data are ``vtk data synth kinetics400`` motion videos (4 classes: left, right, up, down; every single frame
has the same distribution in every class, so only a model that relates frames scores above chance 25 %). The
model is TimeSformer (Bertasius et al., arXiv:2102.05095) at the ``--preset quick`` size (32 px, patch 8, width 64,
depth 4, 4 heads, 8 frames) with its schedule, the temporal-modelling proof of docs/videovit.md (93 % top-1 after
300 steps there). It is evaluated on the held-out videos by :class:`videovit.inference.Predictor` (top-1, per-class
accuracy, ``confusion.png``).

Precision is fp32: at this size bf16 autocast on a CPU is slower, not faster (measured on the 2-core AMX CPU: 0.91
vs 0.34 CPU-s per step of 32 clips), whereas the quickstart UNETR gains from it (0.21 vs 0.29).

Example::

    >>> r = run_video("quickstart/video")
    >>> r.top1, r.confusion
    (0.9..., PosixPath('quickstart/video/run/eval/confusion.png'))
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

__all__ = ["STEPS", "VIDEOS_PER_CLASS", "VIEWS", "VideoQuickstart", "synth_motion", "video_config", "run_video"]

STEPS = 300  # the temporal proof's preset schedule (docs/videovit.md: 93 % val top-1 at step 300)
VIDEOS_PER_CLASS = 200  # training videos per class (validation: a quarter); ~25 ms each to write at 32 px
VIEWS = "2x3"  # 2 clips x 3 crops per held-out video, as in the proof's eval
PRECISION = "32"  # see the module docstring


@dataclasses.dataclass
class VideoQuickstart:
    """What :func:`run_video` returns.

    Attributes:
        run: The run folder.
        data: The generated motion set.
        top1: Top-1 accuracy on the held-out videos (``VIEWS`` views each).
        per_class: Class name -> accuracy.
        metrics: ``run/eval/metrics.json``.
        confusion: ``run/eval/confusion.png``.
        videos: Held-out videos evaluated.
        seconds: Wall time of data, training and evaluation.
    """

    run: Path
    data: Path
    top1: float
    per_class: dict
    metrics: Path
    confusion: Path
    videos: int
    seconds: float


def synth_motion(out: Path, videos_per_class: int = VIDEOS_PER_CLASS, seed: int = 0) -> Path:
    """Write the 4-class motion set (16 frames of 32 x 32) into ``out``; a set of the same spec there is reused."""
    from .data.synth import SynthSpec, write_kinetics_synth
    from .task import SYNTH_MARKER

    out = Path(out)
    spec = SynthSpec(classes=4, videos_per_class=int(videos_per_class), frames=16, size=32, seed=seed)
    marker = out / SYNTH_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("spec") == spec.__dict__:
                return out
        except ValueError:
            pass
    write_kinetics_synth(out, spec, annotations=False)
    return out


def video_config(out: Path, data: Path, steps: int = STEPS, device: str = "auto",
                 precision: Optional[str] = PRECISION, quiet: bool = True, batch_size: int = 32):
    """The quickstart's :class:`~engine.config.TrainConfig`: ``--preset quick`` TimeSformer on ``data``.

    One validation and one checkpoint at the end; no loader workers (decoding 32 px clips costs less than a
    worker process on a 2-core machine). ``batch_size`` (the preset's 32) must not exceed the training videos.
    """
    from engine.config import config_from_cli, with_pretrained_and_preset

    from .presets import preset_options

    steps = int(steps)
    given = dict(data="kinetics400", data_dir=str(data), out=str(out), device=device, precision=precision,
                 max_steps=steps, val_every=steps, ckpt_every=steps, num_workers=0, quiet=quiet, batch_size=batch_size,
                 warmup_steps=min(50, max(0, steps // 6)))
    given = with_pretrained_and_preset(given, None, "quick", None, lambda: preset_options("quick", "timesformer"))
    return config_from_cli("video", "timesformer", given)


def run_video(out: Path, steps: int = STEPS, videos_per_class: int = VIDEOS_PER_CLASS, device: str = "auto",
              precision: Optional[str] = PRECISION, quiet: bool = True) -> VideoQuickstart:
    """Generate the motion set in ``out/data``, train into ``out/run``, evaluate into ``out/run/eval``."""
    from engine import fit
    from engine.loop import raise_if_interrupted

    from .inference import Predictor
    from .report import write_eval_report
    from .task import VideoTask

    t0 = time.perf_counter()
    out = Path(out)
    data = synth_motion(out / "data", videos_per_class)
    batch = min(32, 4 * int(videos_per_class))  # the preset's 32 clips, or every training video of a tiny set
    result = fit(video_config(out / "run", data, steps, device, precision, quiet, batch), VideoTask())
    raise_if_interrupted(result)
    ev = Predictor(result.out, device=device, views=VIEWS).evaluate("val", num_workers=0)
    metrics, confusion = write_eval_report(Path(result.out) / "eval", ev, result.out)
    per_class = {c: float(a) for c, a in zip(ev.classes, ev.metrics["per_class"])}
    return VideoQuickstart(Path(result.out), data, float(ev.metrics["top1"]), per_class, metrics, confusion,
                           ev.videos, time.perf_counter() - t0)

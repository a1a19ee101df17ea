"""``vtk quickstart``: train and evaluate a small UNETR on real MRI and a small TimeSformer on motion videos.

The work is in :func:`medvit.quickstart.run_seg` and :func:`videovit.quickstart.run_video`; this module picks where
each runs and prints the figures. With two or more CPU cores the two halves run side by side, each in its own
process on half the cores (small models scale badly over threads; two single-threaded jobs keep both cores busy),
the video half logging to ``OUT/video/log.txt``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import typer

from cli.apps import app
from engine.choices import check_choice

__all__ = ["quickstart"]

_PARTS = ("seg", "video")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _free_out(root: Path) -> Path:
    """``root``, or ``root-N`` when ``root`` already exists."""
    out, n = root, 2
    while out.exists():
        out, n = Path(f"{root}-{n}"), n + 1
    return out


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _in_child(fn: Callable[..., Any], log: str, threads: int, kwargs: Dict[str, Any]) -> Any:
    """Run ``fn(**kwargs)`` in a worker process with ``threads`` torch threads, its output in ``log``."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    _threads(threads)
    with open(log, "w", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return fn(**kwargs)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(round(seconds % 60)):02d}s"


def _print_seg(r) -> None:
    typer.echo(f"segmentation: UNETR on the Colin27 T1 MRI, held-out case: mean Dice {r.dice:.3f} "
               f"({_minutes(r.seconds)})")
    for name, value in r.per_region.items():
        typer.echo(f"  {name:<24} Dice {value:.3f}")
    typer.echo(f"  overlay:  {r.overlay}")
    typer.echo(f"  Dice bar: {r.dice_plot}   metrics: {r.metrics}")


def _print_video(r) -> None:
    typer.echo(f"video: TimeSformer on the motion set, {r.videos} held-out videos: top-1 {r.top1:.3f} "
               f"({_minutes(r.seconds)})")
    typer.echo("  " + ", ".join(f"{c} {a:.2f}" for c, a in r.per_class.items()))
    typer.echo(f"  confusion: {r.confusion}   metrics: {r.metrics}")


@app.command("quickstart")
def quickstart(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for both runs (default runs/quickstart, or "
                                       "runs/quickstart-N when that exists)."),
    only: Optional[str] = typer.Option(None, "--only", help="seg or video: run one half."),
    seg_steps: Optional[int] = typer.Option(None, "--seg-steps", min=1, help="UNETR steps (default 600)."),
    video_steps: Optional[int] = typer.Option(None, "--video-steps", min=1, help="TimeSformer steps (default 300)."),
    videos_per_class: Optional[int] = typer.Option(None, "--videos-per-class", min=1,
                                                   help="Generated training videos per motion class (default 200)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Train and evaluate a small UNETR (real Colin27 MRI) and TimeSformer (generated motion videos); about 3-5
    minutes on a 2-core CPU, nothing downloaded.

    Example: vtk quickstart --out runs/quickstart
    """
    from medvit.quickstart import STEPS as SEG_STEPS
    from medvit.quickstart import run_seg
    from videovit.quickstart import STEPS as VIDEO_STEPS
    from videovit.quickstart import VIDEOS_PER_CLASS, run_video

    parts = _PARTS if only is None else (check_choice("--only", only, _PARTS),)
    out = Path(out) if out is not None else _free_out(Path("runs") / "quickstart")
    seg_kw = dict(out=out / "seg", steps=seg_steps or SEG_STEPS, device=device)
    video_kw = dict(out=out / "video", steps=video_steps or VIDEO_STEPS,
                    videos_per_class=videos_per_class or VIDEOS_PER_CLASS, device=device)
    t0 = time.perf_counter()
    cores = _cores()
    if len(parts) == 2 and cores >= 2:
        import concurrent.futures
        import multiprocessing

        log = out / "video" / "log.txt"
        typer.echo(f"quickstart in {out}: UNETR here, TimeSformer in a second process (log: {log})")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            video = pool.submit(_in_child, run_video, str(log), cores // 2, video_kw)
            _threads(cores - cores // 2)
            _print_seg(run_seg(**seg_kw))
            _print_video(video.result())
    else:
        typer.echo(f"quickstart in {out}")
        if "seg" in parts:
            _print_seg(run_seg(**seg_kw))
        if "video" in parts:
            _print_video(run_video(**video_kw))
    typer.echo(f"quickstart finished in {_minutes(time.perf_counter() - t0)}; runs in {out} (vtk seg|video eval "
               f"--checkpoint {out}/seg | {out}/video/run)")

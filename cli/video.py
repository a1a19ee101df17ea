"""``vtk video train|eval|predict`` and ``vtk data synth|check kinetics400|ucf101``.

Heavy libraries (torch, decord, av, matplotlib) are imported inside the commands so ``vtk --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import typer

from cli.apps import check_app, synth_app, video_app
from engine.errors import UserError

__all__ = ["synth_kinetics_cmd", "synth_ucf101_cmd", "check_kinetics_cmd", "check_ucf101_cmd", "train", "evaluate",
           "predict"]

_DATASETS = ("kinetics400", "ucf101", "csv")


# --------------------------------------------------------------------------------------------------- data synth
def _synth(kind: str, out: Path, classes: int, videos_per_class: int, frames: int, size: int, seed: int,
           annotations: bool = True) -> None:
    from rich.console import Console

    from videovit.data.synth import SynthSpec, write_kinetics_synth, write_ucf101_synth

    try:
        spec = SynthSpec(classes, videos_per_class, frames, size, seed=seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    counts = (write_kinetics_synth(out, spec, annotations) if kind == "kinetics400" else write_ucf101_synth(out, spec))
    Console().print(f"wrote {counts['train']} train + {counts['val']} val videos ({classes} motion classes, "
                    f"{frames} frames of {size}x{size}) to {out}")


@synth_app.command("kinetics400")
def synth_kinetics_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write (created)."),
    classes: int = typer.Option(4, "--classes", help="Motion classes (2-10)."),
    videos_per_class: int = typer.Option(8, "--videos-per-class", help="Training videos per class (val: N//4)."),
    frames: int = typer.Option(16, "--frames", help="Frames per video."),
    size: int = typer.Option(64, "--size", help="Frame edge in pixels (even)."),
    seed: int = typer.Option(0, "--seed"),
    annotations: bool = typer.Option(True, "--annotations/--no-annotations", help="Also write annotations/*.csv."),
) -> None:
    """Write H.264 mp4 motion videos in the Kinetics layouts (csv, folder per class, official annotations)."""
    _synth("kinetics400", out, classes, videos_per_class, frames, size, seed, annotations)


@synth_app.command("ucf101")
def synth_ucf101_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write (created)."),
    classes: int = typer.Option(4, "--classes", help="Motion classes (2-10)."),
    videos_per_class: int = typer.Option(8, "--videos-per-class", help="Training videos per class."),
    frames: int = typer.Option(16, "--frames"),
    size: int = typer.Option(64, "--size"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write msmpeg4v2 AVI motion videos in the UCF101 layout (UCF-101/, ucfTrainTestlist/ split 1)."""
    _synth("ucf101", out, classes, videos_per_class, frames, size, seed)


# --------------------------------------------------------------------------------------------------- data check
def _probe(path: Path) -> Optional[str]:
    """``None`` if the first and last frames decode, else the problem."""
    from videovit.data.decode import VideoReader

    try:
        reader = VideoReader(path)
        reader.get_batch([0, len(reader) - 1])
    except UserError as e:
        return str(e).replace(f"{path}: ", "")
    return None


def _check(data: str, data_dir: Path, layout: str, fold: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from videovit.data.layouts import load_dataset

    problems, summary = [], []
    for split in ("train", "val"):
        vl = load_dataset(data, data_dir, split, layout=layout, fold=fold)
        problems += [(split, str(p), "missing") for p in vl.missing]
        bad = [(split, str(p), why) for p, _ in vl.samples if (why := _probe(p)) is not None]
        problems += bad
        summary.append((split, vl.layout, len(vl.samples) + len(vl.missing), len(vl.missing), len(bad),
                        len(vl.classes)))
    console = Console()
    table = Table(title=f"{data} at {data_dir}")
    for col in ("split", "layout", "listed", "missing", "unreadable", "classes"):
        table.add_column(col)
    for row in summary:
        table.add_row(*map(str, row))
    console.print(table)
    if problems:
        ptable = Table(title=f"{len(problems)} problem(s)")
        for col in ("split", "file", "problem"):
            ptable.add_column(col, overflow="fold")
        for row in problems:
            ptable.add_row(*row)
        console.print(ptable)
        raise UserError(f"{data_dir}: {len(problems)} missing or unreadable video(s), listed above")
    console.print("all videos readable")


@check_app.command("kinetics400")
def check_kinetics_cmd(
    data_dir: Path = typer.Option(..., "--data-dir", help="Kinetics folder (any layout)."),
    layout: str = typer.Option("auto", "--layout", help="auto, csv, folders or official."),
) -> None:
    """Report missing and unreadable videos of train and val in one pass (exit 2 if any)."""
    _check("kinetics400", data_dir, layout, 1)


@check_app.command("ucf101")
def check_ucf101_cmd(
    data_dir: Path = typer.Option(..., "--data-dir", help="Folder with UCF-101/ and ucfTrainTestlist/."),
    fold: int = typer.Option(1, "--fold", help="Split list 1, 2 or 3."),
) -> None:
    """Report missing and unreadable videos of a UCF101 split in one pass (exit 2 if any)."""
    _check("ucf101", data_dir, "auto", fold)


# --------------------------------------------------------------------------------------------------- train
@video_app.command("train")
def train(
    model: Optional[str] = typer.Option(None, "--model",
                                        help="timesformer, vivit, stam, vtn, mvit or a registry name."),
    data: Optional[str] = typer.Option(None, "--data", help="kinetics400, ucf101 or csv."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset folder."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/video-<model>-<time>)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A config.yaml or run folder to replay."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run folder from checkpoints/last."),
    num_frames: Optional[int] = typer.Option(None, "--num-frames", help="Frames per clip (model and data)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Frame step in a clip (0: whole video)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Crop edge (model and data)."),
    patch_size: Optional[int] = typer.Option(None, "--patch-size"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Clips per optimizer step."),
    lr: Optional[float] = typer.Option(None, "--lr"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adamw or sgd."),
    precision: Optional[str] = typer.Option(None, "--precision", help="32, bf16 or 16-mixed."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    mixup: Optional[float] = typer.Option(None, "--mixup", help="Mixup alpha (0: off)."),
    cutmix: Optional[float] = typer.Option(None, "--cutmix", help="CutMix alpha (0: off)."),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing"),
    randaugment: Optional[str] = typer.Option(None, "--randaugment", help="N,M e.g. 2,9 (off by default)."),
    hflip: Optional[bool] = typer.Option(None, "--hflip/--no-hflip", help="Default: on (off for synthetic motion)."),
    val_views: Optional[str] = typer.Option(None, "--val-views", help="TxS views in validation (default 1x1)."),
    val_every: Optional[int] = typer.Option(None, "--val-every"),
    ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every"),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help="KEY=VALUE model override."),
    data_arg: Optional[List[str]] = typer.Option(None, "--data-arg", help="KEY=VALUE data option."),
    quiet: Optional[bool] = typer.Option(None, "--quiet/--no-quiet"),
) -> None:
    """Train a video model on the shared engine (one random clip per video, multi-view validation)."""
    from engine.config import config_from_cli, parse_key_values
    from videovit.task import resolve_model_name

    model_args = parse_key_values(model_arg, "--model-arg")
    model_args.update(_given(num_frames=num_frames, img_size=img_size, patch_size=patch_size))
    data_args = parse_key_values(data_arg, "--data-arg")
    data_args.update(_given(stride=stride, mixup=mixup, cutmix=cutmix, label_smoothing=label_smoothing,
                            hflip=hflip, val_views=val_views, randaugment=_pair(randaugment)))
    given = dict(data=data, data_dir=str(data_dir) if data_dir else None, max_steps=max_steps,
                 out=str(out) if out else None, resume=str(resume) if resume else None, batch_size=batch_size,
                 lr=lr, optimizer=optimizer, precision=precision, device=device, val_every=val_every,
                 ckpt_every=ckpt_every, warmup_steps=warmup_steps, num_workers=num_workers, seed=seed, quiet=quiet,
                 model_args=model_args or None, data_args=data_args or None)
    cfg = config_from_cli("video", resolve_model_name(model) if model else None, given, config)
    _fit(cfg)


def _given(**kw: Any) -> Dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _pair(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    try:
        n, m = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--randaugment: expected N,M (e.g. 2,9), got {text!r}") from None
    return [n, m]


def _fit(cfg) -> None:
    from engine import fit
    from videovit.task import VideoTask, resolve_data_args

    if cfg.data not in _DATASETS or not cfg.data_dir:
        raise UserError(f"--data must be one of {', '.join(_DATASETS)} and --data-dir is required; got "
                        f"{cfg.data!r}, {cfg.data_dir!r}")
    resolve_data_args(cfg)
    result = fit(cfg, VideoTask())
    typer.echo(f"run folder: {result.out}")


# --------------------------------------------------------------------------------------------------- eval
def _load_model(checkpoint: Path, device: str):
    import torch

    import videovit
    from engine import load_run

    cfg, state = load_run(checkpoint)
    if cfg.task != "video":
        raise UserError(f"{checkpoint}: checkpoint is for task {cfg.task!r}, not video")
    model = videovit.create_model(cfg.model, **cfg.model_args)
    model.load_state_dict(state)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    return cfg, model.to(dev).eval(), dev


@video_app.command("eval")
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder or .safetensors file."),
    data: Optional[str] = typer.Option(None, "--data", help="Default: the run's --data."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: the run's --data-dir."),
    views: str = typer.Option("1x1", "--views", help="TxS: T uniform clips x S spatial crops per video."),
    split: str = typer.Option("val", "--split", help="val or train."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for metrics.json and confusion.png."),
    batch_size: int = typer.Option(4, "--batch-size", help="Videos per forward pass."),
    num_workers: int = typer.Option(2, "--num-workers"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Multi-view evaluation: top-1, top-5 and per-class accuracy, confusion matrix PNG and metrics.json."""
    from videovit.data.dataset import VideoViewDataset
    from videovit.task import _Opts, classification_metrics, load_split, predict_views

    t_s = _views_option(views)
    cfg, model, dev = _load_model(checkpoint, device)
    cfg.data = data or cfg.data
    cfg.data_dir = str(data_dir) if data_dir else cfg.data_dir
    vl = load_split(cfg, split)
    classes = cfg.data_args.get("classes") or vl.classes
    o = _Opts.of(cfg)
    ds = VideoViewDataset(vl, o.num_frames, o.stride, o.crop_size, t_s, o.mean, o.std, o.backend)
    import torch

    pairs = list(predict_views(model, ds, range(len(ds)), dev, batch_size, num_workers))
    probs, labels = torch.stack([p for p, _ in pairs]), torch.tensor([y for _, y in pairs])
    m = classification_metrics(probs, labels, len(classes))
    out = out or _default_eval_dir(checkpoint, split, views)
    _write_eval(out, m, classes, dict(checkpoint=str(checkpoint), data=cfg.data, data_dir=cfg.data_dir, split=split,
                                      views=views, videos=len(ds), missing=len(vl.missing)))


def _default_eval_dir(checkpoint: Path, split: str, views: str) -> Path:
    run = checkpoint if checkpoint.is_dir() else checkpoint.parent.parent
    return run / f"eval-{split}-{views}"


def _write_eval(out: Path, m: Dict[str, Any], classes: List[str], info: Dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out.mkdir(parents=True, exist_ok=True)
    record = {**info, "top1": m["top1"], "top5": m["top5"], "mean_class_accuracy": m["mean_class_accuracy"],
              "per_class": {c: {"accuracy": a, "support": s} for c, a, s in zip(classes, m["per_class"], m["support"])},
              "confusion": m["confusion"], "classes": list(classes)}
    _atomic_write_text(out / "metrics.json", json.dumps(record, indent=1) + "\n")
    plot_confusion(m["confusion"], classes, out / "confusion.png")
    console = Console()
    table = Table(title=f"{info['split']}: {info['videos']} videos x {info['views']} views")
    for col in ("class", "accuracy", "videos"):
        table.add_column(col)
    for c, a, s in zip(classes, m["per_class"], m["support"]):
        table.add_row(c, f"{a:.3f}", str(s))
    console.print(table)
    console.print(f"top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  mean class accuracy {m['mean_class_accuracy']:.4f}"
                  f"  ({info['missing']} listed videos missing, skipped)")
    console.print(f"wrote {out / 'metrics.json'} and {out / 'confusion.png'}")


def plot_confusion(confusion: List[List[int]], classes: List[str], path: Path) -> None:
    """Save the confusion matrix (rows: true class, columns: predicted) as a PNG with class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * k + 2), max(4, 0.45 * k + 2)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    _atomic_savefig(fig, path)
    plt.close(fig)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_savefig(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def _views_option(views: str) -> Tuple[int, int]:
    """``--views TxS`` -> ``(T, S)``; a malformed value is a user error."""
    from videovit.data.samplers import parse_views

    try:
        return parse_views(views)
    except ValueError as e:
        raise UserError(f"--views: {e}") from None


# --------------------------------------------------------------------------------------------------- predict
@video_app.command("predict")
def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder or .safetensors file."),
    input: Path = typer.Option(..., "--input", help="A video file or a folder of videos."),
    out: Path = typer.Option(Path("predictions"), "--out", help="Folder for the JSON and contact sheets."),
    views: str = typer.Option("1x1", "--views", help="TxS views averaged per video."),
    top_k: int = typer.Option(5, "--top-k"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Top-k labels per video as a table and JSON, plus a PNG contact sheet of the sampled frames."""
    from rich.console import Console

    from videovit.data.layouts import VIDEO_EXTS

    t_s = _views_option(views)
    if not input.exists():
        raise UserError(f"{input}: no such file or folder")
    files = sorted(p for p in input.rglob("*") if p.suffix.lower() in VIDEO_EXTS) if input.is_dir() else [input]
    if not files:
        raise UserError(f"{input}: no video files ({', '.join(VIDEO_EXTS)})")
    cfg, model, dev = _load_model(checkpoint, device)
    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    results, failed = {}, []
    for path in files:
        try:
            results[str(path)] = _predict_one(model, path, cfg, t_s, dev, top_k, out, console)
        except UserError as e:
            if len(files) == 1:
                raise
            failed.append(str(path))
            print(f"vtk: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    _atomic_write_text(out / "predictions.json", json.dumps({"predictions": results, "failed": failed}, indent=1))
    console.print(f"wrote {out / 'predictions.json'} ({len(results)} videos, {len(failed)} failed)")
    if failed:
        raise UserError(f"{input}: {len(failed)} of {len(files)} videos could not be decoded: "
                        f"{', '.join(Path(f).name for f in failed)}")


def _predict_one(model, path: Path, cfg, views, dev, top_k: int, out: Path, console) -> List[Dict[str, Any]]:
    from rich.table import Table

    from videovit.task import predict_video

    classes = cfg.data_args.get("classes") or [str(i) for i in range(cfg.model_args.get("num_classes", 0))]
    probs, frames, indices = predict_video(model, path, cfg, views, dev)
    scores, idx = probs.topk(min(top_k, probs.numel()))
    top = [{"label": classes[i], "index": int(i), "score": float(s)} for s, i in zip(scores.tolist(), idx.tolist())]
    table = Table(title=str(path))
    table.add_column("rank")
    table.add_column("label")
    table.add_column("score")
    for r, t in enumerate(top, 1):
        table.add_row(str(r), t["label"], f"{t['score']:.4f}")
    console.print(table)
    contact_sheet(frames, f"{path.name}: {top[0]['label']} ({top[0]['score']:.2f})", out / f"{path.stem}.png",
                  indices)
    return top


def contact_sheet(frames, title: str, path: Path, indices: Optional[Sequence[int]] = None) -> None:
    """Save the sampled frames ``(T, H, W, 3)`` in one row (wrapping at 8) with the prediction as title.

    Each frame is captioned with its frame number in the file (``indices``) or, without them, its clip position.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(frames)
    cols = min(T, 8)
    rows = (T + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < T:
            ax.imshow(frames[i])
            ax.set_title(f"frame {int(indices[i])}" if indices is not None else f"t={i}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _atomic_savefig(fig, path)
    plt.close(fig)

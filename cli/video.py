"""``vtk video train|eval|predict`` and ``vtk data synth|check kinetics400|ucf101``: option parsing and printing.

The work is in the package: :meth:`videovit.task.VideoTask.resolve_config` finalises a training config,
:class:`videovit.inference.Predictor` evaluates and predicts, :mod:`videovit.report` writes the files and
:mod:`videovit.data.check` finds missing and unreadable videos. Heavy libraries (torch, decord, av, matplotlib) are
imported inside the commands so ``vtk --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from cli.apps import check_app, prepare_app, synth_app, video_app
from engine.choices import check_choice
from engine.errors import UserError

__all__ = ["synth_kinetics_cmd", "synth_ucf101_cmd", "check_kinetics_cmd", "check_ucf101_cmd", "train", "evaluate",
           "predict", "score"]

_DATASETS = ("kinetics400", "ucf101", "csv")  # videovit.task.DATASETS (not imported here: it pulls in torch)
_SPLITS = ("train", "val")
_KINETICS_LAYOUTS = ("auto", "csv", "folders", "official")  # videovit.data.layouts.KINETICS_LAYOUTS


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
def _check(data: str, data_dir: Path, layout: str, fold: int) -> None:
    from rich.console import Console

    from videovit.data.check import PROBLEM_COLUMNS, SUMMARY_COLUMNS, check_dataset
    from videovit.data.prepare import check_with_manifest

    result = check_with_manifest(data_dir, layout) if data == "kinetics400" else None  # no re-probing
    result = result or check_dataset(data, data_dir, layout=layout, fold=fold)
    console = Console()
    console.print(_table(f"{data} at {data_dir}", SUMMARY_COLUMNS, result.summary))
    if not result.ok:
        console.print(_table(f"{len(result.problems)} problem(s)", PROBLEM_COLUMNS, result.problems, fold=True))
        raise UserError(f"{data_dir}: {len(result.problems)} problem(s) (missing or unreadable videos, unusable "
                        "split lists), listed above")
    console.print("all videos readable")


def _table(title: str, columns, rows, fold: bool = False):
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold" if fold else "ellipsis")
    for row in rows:
        table.add_row(*map(str, row))
    return table


@check_app.command("kinetics400")
def check_kinetics_cmd(
    data_dir: Path = typer.Option(..., "--data-dir", help="Kinetics folder (any layout)."),
    layout: str = typer.Option("auto", "--layout", help="auto, csv, folders or official."),
) -> None:
    """Report missing and unreadable videos of train and val in one pass (exit 2 if any)."""
    _check("kinetics400", data_dir, check_choice("--layout", layout, _KINETICS_LAYOUTS), 1)


@check_app.command("ucf101")
def check_ucf101_cmd(
    data_dir: Path = typer.Option(..., "--data-dir", help="Folder with UCF-101/ and ucfTrainTestlist/."),
    fold: int = typer.Option(1, "--fold", help="Split list 1, 2 or 3."),
) -> None:
    """Report missing and unreadable videos of a UCF101 split in one pass (exit 2 if any)."""
    _check("ucf101", data_dir, "auto", check_choice("--fold", fold, (1, 2, 3)))


# --------------------------------------------------------------------------------------------------- data prepare
@prepare_app.command("kinetics400")
def prepare_kinetics_cmd(
    src: Path = typer.Option(..., "--src", help="The Kinetics folder (any layout)."),
    out: Path = typer.Option(..., "--out", help="Folder for the copy and its manifest.json (created)."),
    short_side: int = typer.Option(320, "--short-side", help="Short side of the copies in pixels (never upscaled)."),
    workers: int = typer.Option(4, "--workers", help="Encoding processes."),
    layout: str = typer.Option("auto", "--layout", help="auto, csv, folders or official."),
) -> None:
    """Re-encode a copy (H.264, short side N) in parallel; list corrupt and missing videos in manifest.json.

    vtk data check, training and eval on the copy then read the manifest instead of probing every file.
    Example: vtk data prepare kinetics400 --src data/k400 --out data/k400-320 --short-side 320 --workers 8
    """
    from rich.console import Console

    from engine.progress import ItemProgress
    from videovit.data.prepare import MANIFEST, prepare_kinetics

    check_choice("--layout", layout, _KINETICS_LAYOUTS)
    with ItemProgress(0, "prepare", unit="videos") as bar:
        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.set_total(total)
            bar.advance(done - bar.done)

        m = prepare_kinetics(src, out, short_side=short_side, workers=workers, layout=layout, progress=progress)
    rows = [(s, v["layout"], v["listed"], v["present"], v["missing"], v["corrupt"]) for s, v in m["splits"].items()]
    console = Console()
    console.print(_table(f"{src} -> {out} (short side {short_side})",
                         ("split", "layout", "listed", "present", "missing", "corrupt"), rows))
    corrupt = [(k, v.get("error", "")) for k, v in m["videos"].items() if v["status"] == "corrupt"]
    if corrupt:
        console.print(_table(f"{len(corrupt)} corrupt video(s), not copied", ("file", "problem"), corrupt, fold=True))
    console.print(f"wrote {out / MANIFEST}")


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
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Fine-tune from a weights file (timm/HF "
                                              "ViT, official TimeSformer/VTN, pytorchvideo MViT, vtk ...); the "
                                              "run keeps its path + sha256 and never re-reads it."),
    preset: Optional[str] = typer.Option(None, "--preset", help="quick: a small model and a short schedule "
                                         "(explicit options win)."),
) -> None:
    """Train a video model on the shared engine (one random clip per video, multi-view validation).

    Example: vtk video train --model timesformer --pretrained vit_base_patch16_224.pth --data ucf101 --data-dir DIR
    """
    from engine import fit
    from engine.config import config_from_cli, parse_key_values, with_pretrained_and_preset
    from engine.loop import raise_if_interrupted
    from videovit.presets import preset_options
    from videovit.task import VideoTask

    if data is not None:
        check_choice("--data", data, _DATASETS)
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
    given = with_pretrained_and_preset(given, pretrained, preset, resume,
                                       lambda: preset_options(preset, model))
    cfg = config_from_cli("video", model, given, config)
    result = fit(cfg, VideoTask())  # VideoTask.resolve_config finalises the config before config.yaml is written
    typer.echo(f"run folder: {result.out}")
    raise_if_interrupted(result)  # a signal that ended the run: exit 128 + signal after saving



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


# ------------------------------------------------------------------------------------ weights without a run
def _opt_model():
    return typer.Option(None, "--model", help="With --pretrained: the weights' registry model (mvit, timesformer, "
                        "vivit, stam, vtn, ...).")


def _opt_pretrained():
    return typer.Option(None, "--pretrained", help="A released weights file (pytorchvideo, PySlowFast, official, "
                        "HF, timm, vtk); the test protocol comes from the model's registry entry.")


def _opt_num_frames():
    return typer.Option(None, "--num-frames", help="With --pretrained: frames per clip (registry default).")


def _opt_stride():
    return typer.Option(None, "--stride", help="With --pretrained: frame step in a clip (0: whole video).")


def _opt_crop_size():
    return typer.Option(None, "--crop-size", help="With --pretrained: crop edge in pixels (model and data).")


def _opt_short_side():
    return typer.Option(None, "--short-side", help="With --pretrained: short side before cropping.")


def _opt_mean():
    return typer.Option(None, "--mean", help="With --pretrained: R,G,B normalisation mean in [0, 1].")


def _opt_std():
    return typer.Option(None, "--std", help="With --pretrained: R,G,B normalisation std.")


def _opt_classes():
    return typer.Option(None, "--classes", help="With --pretrained: class names: kinetics400, ucf101, a file (one "
                        "per line) or a,b,c (default: the shipped list of the classifier's size).")


def _opt_model_arg():
    return typer.Option(None, "--model-arg", help="With --pretrained: KEY=VALUE model override.")


def _opt_save_predictions():
    return typer.Option(None, "--save-predictions", help="Also write FILE.npz with every view's softmax per video "
                        "(re-score or late-fuse later with vtk video score).")


_PROTOCOL_OPTIONS = {"num_frames": "--num-frames", "stride": "--stride", "crop_size": "--crop-size",
                     "short_side": "--short-side", "mean": "--mean", "std": "--std", "classes": "--classes",
                     "model_arg": "--model-arg"}


def _rgb(text: Optional[str], option: str) -> Optional[List[float]]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{option}: expected three numbers R,G,B, got {text!r}") from None


def _weights_or_run(checkpoint: Optional[Path], model: Optional[str], pretrained: Optional[Path],
                    views: Optional[str], protocol: Dict[str, Any], data: Optional[str] = None):
    """``(source, views)``: ``--checkpoint RUN``, or ``--model NAME --pretrained FILE`` loaded with its protocol
    (an :class:`engine.pretrained.WeightsRun`, which the Predictor takes in place of a run)."""
    from engine.config import parse_key_values

    if checkpoint is not None:
        given = [_PROTOCOL_OPTIONS[k] for k, v in protocol.items() if v] + (["--model"] if model else []) + (
            ["--pretrained"] if pretrained else [])
        if given:
            raise UserError(f"{given[0]}: only without --checkpoint (a run replays its own model and protocol)")
        return checkpoint, views or "1x1"
    if not model or not pretrained:
        raise UserError("give --checkpoint RUN, or --model NAME with --pretrained FILE")
    from engine.pretrained import describe
    from videovit.pretrained import weights_run

    p = dict(protocol)
    p["mean"], p["std"] = _rgb(p["mean"], "--mean"), _rgb(p["std"], "--std")
    p["model_args"] = parse_key_values(p.pop("model_arg"), "--model-arg")
    run = weights_run(model, pretrained, views=views, data=data, **p)
    typer.echo(describe(run))
    return run, run.cfg.data_args["val_views"]


# --------------------------------------------------------------------------------------------------- eval
@video_app.command("eval")
def evaluate(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Run folder or .safetensors file (or "
                                              "--model NAME --pretrained FILE)."),
    data: Optional[str] = typer.Option(None, "--data", help="Default: the run's --data."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: the run's --data-dir."),
    views: Optional[str] = typer.Option(None, "--views", help="TxS: T uniform clips x S spatial crops per video "
                                        "(default 1x1 for a run, the registry protocol's with --pretrained)."),
    split: str = typer.Option("val", "--split", help="val or train."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for metrics.json and confusion.png."),
    batch_size: int = typer.Option(4, "--batch-size", help="Videos per forward pass."),
    num_workers: int = typer.Option(2, "--num-workers"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where the hardware multiplies it "
                                  "natively, else fp32), 32, bf16 or 16; probabilities and metrics stay fp32."),
    model: Optional[str] = _opt_model(),
    pretrained: Optional[Path] = _opt_pretrained(),
    num_frames: Optional[int] = _opt_num_frames(),
    stride: Optional[int] = _opt_stride(),
    crop_size: Optional[int] = _opt_crop_size(),
    short_side: Optional[int] = _opt_short_side(),
    mean: Optional[str] = _opt_mean(),
    std: Optional[str] = _opt_std(),
    classes: Optional[str] = _opt_classes(),
    model_arg: Optional[List[str]] = _opt_model_arg(),
    save_predictions: Optional[Path] = _opt_save_predictions(),
) -> None:
    """Multi-view evaluation: top-1, top-5 and per-class accuracy, confusion matrix PNG and metrics.json.

    Under torchrun the videos are split over the ranks and rank 0 writes the same files as one process.

    Example: vtk video eval --model mvit --pretrained MVIT_B_16x4.pyth --data kinetics400 --data-dir DIR
    """
    from videovit.inference import Predictor
    from videovit.report import default_eval_dir, write_eval_report

    check_choice("--split", split, _SPLITS)
    if data is not None:
        check_choice("--data", data, _DATASETS)
    protocol = dict(num_frames=num_frames, stride=stride, crop_size=crop_size, short_side=short_side, mean=mean,
                    std=std, classes=classes, model_arg=model_arg)
    source, views = _weights_or_run(checkpoint, model, pretrained, views, protocol, data)
    predictor = Predictor(source, device=device, views=views, precision=precision)
    ev = predictor.evaluate(split, data=data, data_dir=data_dir, batch_size=batch_size, num_workers=num_workers)
    if not predictor.dist.is_main:
        return  # rank 0 writes the files of the whole split
    out = out or (default_eval_dir(checkpoint, split, ev.views) if checkpoint else
                  Path(f"eval-{Path(source).stem}-{split}-{ev.views}"))
    metrics_path, confusion_path = write_eval_report(out, ev, source)
    _print_eval(ev, metrics_path, confusion_path)
    if save_predictions is not None:
        from videovit.score import save_predictions as save

        save(save_predictions, ev.paths, ev.view_probs, ev.labels, ev.classes, checkpoint=str(source),
             data=ev.data, data_dir=ev.data_dir, split=ev.split, views=ev.views, missing=ev.missing)
        typer.echo(f"wrote {save_predictions} ({ev.videos} videos x {ev.views} views)")


@video_app.command("score")
def score(
    files: List[Path] = typer.Argument(..., help="Predictions files written by --save-predictions (several: "
                                       "late fusion, the mean of their per-video probabilities)."),
    out: Path = typer.Option(Path("score"), "--out", help="Folder for metrics.json and confusion.png."),
) -> None:
    """Re-score saved predictions, or late-fuse several runs, without decoding the videos again.

    Example: vtk video score runs/a/val.npz runs/b/val.npz --out fused
    """
    from videovit.report import write_eval_report
    from videovit.score import score_files

    ev = score_files(files)
    metrics_path, confusion_path = write_eval_report(out, ev, ev.checkpoint)
    _print_eval(ev, metrics_path, confusion_path)


def _print_eval(ev, metrics_path: Path, confusion_path: Path) -> None:
    from rich.console import Console

    m = ev.metrics
    rows = [(c, f"{a:.3f}", s) for c, a, s in zip(ev.classes, m["per_class"], m["support"])]
    console = Console()
    console.print(_table(f"{ev.split}: {ev.videos} videos x {ev.views} views", ("class", "accuracy", "videos"), rows))
    console.print(f"top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  mean class accuracy {m['mean_class_accuracy']:.4f}"
                  f"  ({ev.missing} listed videos missing, skipped)")
    console.print(f"wrote {metrics_path} and {confusion_path}")


# --------------------------------------------------------------------------------------------------- predict
@video_app.command("predict")
def predict(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Run folder or .safetensors file (or "
                                              "--model NAME --pretrained FILE)."),
    input: Path = typer.Option(..., "--input", help="A video file or a folder of videos."),
    out: Path = typer.Option(Path("predictions"), "--out", help="Folder for the JSON and contact sheets."),
    views: Optional[str] = typer.Option(None, "--views", help="TxS views averaged per video (default 1x1 for a "
                                        "run, the registry protocol's with --pretrained)."),
    top_k: int = typer.Option(5, "--top-k"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where the hardware multiplies it "
                                  "natively, else fp32), 32, bf16 or 16; probabilities and metrics stay fp32."),
    model: Optional[str] = _opt_model(),
    pretrained: Optional[Path] = _opt_pretrained(),
    num_frames: Optional[int] = _opt_num_frames(),
    stride: Optional[int] = _opt_stride(),
    crop_size: Optional[int] = _opt_crop_size(),
    short_side: Optional[int] = _opt_short_side(),
    mean: Optional[str] = _opt_mean(),
    std: Optional[str] = _opt_std(),
    classes: Optional[str] = _opt_classes(),
    model_arg: Optional[List[str]] = _opt_model_arg(),
    save_predictions: Optional[Path] = _opt_save_predictions(),
    window: Optional[float] = typer.Option(None, "--window", help="Long videos: slide a window of SECONDS over "
                                           "each video and write a per-window timeline (JSON, CSV, PNG)."),
    hop: Optional[float] = typer.Option(None, "--hop", help="With --window: SECONDS between window starts "
                                        "(default: the window, no overlap)."),
    model_file: Optional[Path] = typer.Option(None, "--model-file", help="A `vtk models export` file (.onnx runs "
                                              "in onnxruntime, .pt in TorchScript) with its protocol inside; "
                                              "--views defaults to its protocol's."),
) -> None:
    """Top-k labels per video as a table and JSON, plus a PNG contact sheet of the sampled frames.

    Under torchrun the files are split over the ranks; rank 0 writes predictions.json for all of them.

    Example: vtk video predict --model mvit --pretrained MVIT_B_16x4.pyth --input clip.mp4
    """
    from rich.console import Console

    from videovit.inference import Predictor, collect_videos
    from videovit.report import contact_sheet_names, write_predictions

    if top_k < 1:
        raise UserError(f"--top-k: must be >= 1, got {top_k}")
    protocol = dict(num_frames=num_frames, stride=stride, crop_size=crop_size, short_side=short_side, mean=mean,
                    std=std, classes=classes, model_arg=model_arg)
    if model_file is not None:
        from backbones.runtime import refuse_with_model_file

        refuse_with_model_file(model_file, {"--checkpoint": checkpoint, "--model": model, "--pretrained": pretrained,
                                            **{_PROTOCOL_OPTIONS[k]: v for k, v in protocol.items()}})
    files = collect_videos(input)
    if model_file is not None:
        predictor = Predictor.from_model_file(model_file, device=device, views=views, precision=precision)
        source = model_file
    else:
        source, views = _weights_or_run(checkpoint, model, pretrained, views, protocol)
        predictor = Predictor(source, device=device, views=views, precision=precision)
    if window is not None or hop is not None:
        return _predict_windows(predictor, files, input, out, window, hop, top_k)
    names = contact_sheet_names(files, input if input.is_dir() else input.parent)
    console = Console()

    def show(path, top) -> None:
        console.print(_table(str(path), ("rank", "label", "score"), _top_rows(top)))

    def warn(path, message: str) -> None:
        if len(files) > 1:
            print(f"vtk: error: {message}", file=sys.stderr, flush=True)

    res = predictor.predict_all(files, top_k, lambda p: out / names[p], None if predictor.dist.distributed else show,
                                warn)
    if res is None:
        return  # rank 0 writes the files of every rank
    if predictor.dist.distributed:
        for path, top in res.top.items():
            show(path, top)
    results, failed, errors, scores = res.top, res.failed, res.errors, res.scores
    if failed and len(files) == 1:
        raise UserError(errors[failed[0]])
    written = write_predictions(out, results, failed, res.sheets)
    console.print(f"wrote {written} ({len(results)} videos, {len(failed)} failed)")
    if save_predictions is not None and results:
        from videovit.score import save_predictions as save

        save(save_predictions, list(results), [scores[p] for p in results], [-1] * len(results), predictor.classes,
             checkpoint=str(source), views=predictor.views_text, split="", data="", data_dir=str(input), missing=0)
        console.print(f"wrote {save_predictions}")
    if failed:
        raise UserError(f"{input}: {len(failed)} of {len(files)} videos could not be decoded: "
                        f"{', '.join(Path(f).name for f in failed)}")


def _top_rows(top):
    return [(r, t["label"], f"{t['score']:.4f}") for r, t in enumerate(top, 1)]


def _predict_windows(predictor, files, input: Path, out: Path, window: Optional[float], hop: Optional[float],
                     top_k: int) -> None:
    """``predict --window``: a timeline per video (this rank's share under torchrun), one line per problem."""
    from rich.console import Console

    from engine.progress import ItemProgress
    from videovit.report import contact_sheet_names
    from videovit.windows import predict_timeline, write_timeline

    if window is None:
        raise UserError("--hop: only with --window SECONDS")
    names = contact_sheet_names(files, input if input.is_dir() else input.parent)
    console, problems = Console(), []
    for path in predictor.shard(files):
        try:
            with ItemProgress(0, f"windows {path.name}", unit="windows", enabled=predictor.dist.is_main) as bar:
                tl = predict_timeline(predictor, path, window, hop, top_k, progress=bar)
        except UserError as e:
            if len(files) == 1:
                raise
            problems.append(" ".join(str(e).split()))
            print(f"vtk: error: {problems[-1]}", file=sys.stderr, flush=True)
            continue
        written = write_timeline(tl, out / names[path].with_suffix(""))
        rows = [(f"{r['start']:.2f}-{r['end']:.2f}", r["top"][0]["label"], f"{r['top'][0]['score']:.3f}")
                for r in tl.windows]
        if len(rows) > 20:
            rows = rows[:10] + [("...", f"{len(rows) - 20} more windows", "")] + rows[-10:]
        console.print(_table(f"{path}: {len(tl.windows)} windows", ("seconds", "top-1", "score"), rows))
        console.print(f"wrote {', '.join(map(str, written))} (at most {tl.max_cached_frames} decoded frames held)")
        if tl.stopped:
            problems.append(f"{' '.join(tl.stopped.split())}; predicted {len(tl.windows)} of {tl.planned} windows "
                            f"(timeline written)")
            if len(files) > 1:
                print(f"vtk: error: {problems[-1]}", file=sys.stderr, flush=True)
    problems = [p for part in predictor.gather(problems) for p in part]
    if problems:
        raise UserError(problems[0] if len(problems) == 1 else f"{input}: {len(problems)} videos with problems, "
                        "listed above")

"""``vtk seg train|eval|predict`` and ``vtk data synth btcv`` / ``vtk data check btcv``: options and printing.

Heavy imports (torch, monai, nibabel) happen inside the commands so ``vtk --help`` stays fast. The papers'
recipes and the config defaults live in :mod:`medvit.recipes` (filled by ``SegTask.resolve_config``), evaluation
in :mod:`medvit.evaluate`, prediction in :mod:`medvit.inference`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from cli.apps import check_app, data_app, seg_app, synth_app
from engine.errors import UserError

__all__ = ["synth_btcv_cmd", "check_btcv_cmd", "fingerprint_cmd", "train", "evaluate", "predict"]


@synth_app.command("btcv")
def synth_btcv_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write (created)."),
    cases: int = typer.Option(6, "--cases", min=2, help="Labelled cases (the last cases//5 are validation)."),
    size: int = typer.Option(96, "--size", min=16, help="In-plane voxels; 512 gives BTCV's 0.7-0.9 mm spacing."),
    test_cases: int = typer.Option(2, "--test-cases", min=0, help="Unlabelled cases in imagesTs/."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a synthetic CT dataset in the exact BTCV layout (dataset_0.json, imagesTr, labelsTr, imagesTs)."""
    from medvit.data.synth import synth_btcv

    path = synth_btcv(out, cases=cases, size=size, seed=seed, test_cases=test_cases)
    meta = json.loads(path.read_text())
    typer.echo(f"wrote {path} ({len(meta['training'])} training, {len(meta['validation'])} validation, "
               f"{len(meta['test'])} test cases, {size}x{size} in-plane)")


@check_app.command("btcv")
def check_btcv_cmd(
    data_dir: Path = typer.Option(..., "--data-dir", help="Folder holding dataset_0.json."),
    num_classes: int = typer.Option(14, "--num-classes", help="Labels must lie in 0..num_classes-1."),
) -> None:
    """Validate a BTCV download; print every problem in one table; exit 2 if there is any."""
    from rich.console import Console
    from rich.table import Table

    from medvit.data.check import check_dataset

    n, problems = check_dataset(data_dir, num_classes)
    console = Console(width=160)
    if not problems:
        console.print(f"{data_dir}: {n} files checked, no problems")
        return
    table = Table("file", "problem", title=f"{data_dir}: {len(problems)} problem(s) in {n} files")
    for f, p in problems:
        table.add_row(_rel(f, data_dir), p)
    console.print(table)
    raise UserError(f"{data_dir}: {len(problems)} problem(s) found (see the table above)")


@data_app.command("fingerprint")
def fingerprint_cmd(
    data_dir: Path = typer.Argument(..., help="Dataset folder (nnU-Net raw, decathlon datalist or NIfTI folder)."),
    data: Optional[str] = typer.Option(None, "--data", help="nnunet, decathlon, btcv, synapse or folder (default: "
                                       "detected)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the fingerprint as JSON (atomic)."),
) -> None:
    """nnU-Net's dataset fingerprint: spacing, size, foreground intensities; the suggested spacing, ROI, normalisation.

    Example: vtk data fingerprint data/Dataset004_Hippocampus --out fingerprint.json
    """
    from engine.choices import check_choice
    from engine.io import atomic_write_json
    from medvit.data.fingerprint import dataset_fingerprint

    if data is not None:
        check_choice("--data", data, ("nnunet", "decathlon", "btcv", "synapse", "folder"), what="3D dataset kind")
    fp = dataset_fingerprint(data_dir, data)
    sp, sh, it, sg = fp["spacing"], fp["shape"], fp["intensity"], fp["suggested"]
    typer.echo(f"{data_dir}: {fp['num_cases']} labelled case(s), --data {fp['kind']}, modality "
               f"{fp['modality'] or 'not declared'} (axes {fp['axis_order']})")
    typer.echo(f"spacing (mm)   median {_vec(sp['median'])}  min {_vec(sp['min'])}  max {_vec(sp['max'])}")
    typer.echo(f"size (voxels)  median {_vec(sh['median'], 0)}  min {_vec(sh['min'], 0)}  max {_vec(sh['max'], 0)}")
    if it is not None:
        typer.echo(f"foreground intensity  mean {it['mean']:.2f}  std {it['std']:.2f}  median {it['median']:.2f}  "
                   f"0.5% {it['percentile_00_5']:.2f}  99.5% {it['percentile_99_5']:.2f}  min {it['min']:.2f}  "
                   f"max {it['max']:.2f}")
    typer.echo(f"suggested: --data-arg spacing=[{','.join(f'{v:g}' for v in sg['spacing'])}]"
               f"{' (anisotropic)' if sg['anisotropic'] else ''}  --roi {sg['roi_edge']} (per axis "
               f"{_vec(sg['roi'], 0)})  --data-arg normalization={sg['normalization']} ({sg['reason']})")
    if out is not None:
        atomic_write_json(out, fp)
        typer.echo(f"wrote {out}")


def _vec(values, digits: int = 2) -> str:
    return " x ".join(f"{v:.{digits}f}" for v in values)


@seg_app.command("train")
def train(
    model: Optional[str] = typer.Option(None, "--model", help="unetr, swin_unetr, transunet, medt or any medvit "
                                        "model (`vtk models list`)."),
    data: Optional[str] = typer.Option(None, "--data", help="btcv, synapse, decathlon, folder, folder2d or nnunet."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset folder."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/seg-<model>-<time>)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A config.yaml or run folder to replay."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run folder from checkpoints/last."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Volumes (3D) or slices (2D) per step."),
    lr: Optional[float] = typer.Option(None, "--lr"),
    precision: Optional[str] = typer.Option(None, "--precision", help="32, bf16 or 16-mixed."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    img_size: Optional[int] = typer.Option(None, "--img-size", "--roi", help="Crop/ROI edge (3D) or slice size."),
    feature_size: Optional[int] = typer.Option(None, "--feature-size"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Including background."),
    val_every: Optional[int] = typer.Option(None, "--val-every"),
    ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", help="MONAI CacheDataset."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", help="Random crops per volume (3D)."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps"),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help="KEY=VALUE model override."),
    data_arg: Optional[List[str]] = typer.Option(None, "--data-arg", help="KEY=VALUE data option."),
    quiet: Optional[bool] = typer.Option(None, "--quiet/--no-quiet"),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Fine-tune from a weights file (R50+ViT-B_16"
                                              ".npz, MONAI UNETR/Swin-UNETR or SSL model_swinvit.pt, timm, vtk ...); "
                                              "the run keeps its path + sha256 and never re-reads it."),
    preset: Optional[str] = typer.Option(None, "--preset", help="quick: a small model and a short schedule "
                                         "(explicit options win)."),
    folds: Optional[int] = typer.Option(None, "--folds", help="K-fold cross-validation over all labelled cases "
                                        "(nnU-Net's split by case id; RUN/splits.json)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Which fold (0..K-1) to train; with --folds."),
) -> None:
    """Train a segmentation model on the shared engine (DiceCE loss, sliding-window validation).

    Example: vtk seg train --model transunet --pretrained R50+ViT-B_16.npz --data synapse --data-dir DIR
    """
    from engine.config import config_from_cli, parse_key_values, with_pretrained_and_preset
    from medvit.presets import preset_options

    model_args = parse_key_values(model_arg, "--model-arg")
    model_args.update({k: v for k, v in dict(feature_size=feature_size, num_classes=num_classes).items() if v})
    data_args = parse_key_values(data_arg, "--data-arg")
    data_args.update({k: v for k, v in dict(cache=cache, num_samples=num_samples, roi=img_size, folds=folds,
                                            fold=fold).items() if v is not None})
    if fold is not None and folds is None and "folds" not in data_args:
        raise UserError("--fold: needs --folds K (e.g. --folds 5 --fold 0)")
    given = dict(data=data, data_dir=str(data_dir) if data_dir else None, max_steps=max_steps,
                 out=str(out) if out else None, resume=str(resume) if resume else None, batch_size=batch_size,
                 lr=lr, precision=precision, device=device, val_every=val_every, ckpt_every=ckpt_every,
                 num_workers=num_workers, seed=seed, warmup_steps=warmup_steps, quiet=quiet,
                 model_args=model_args or None, data_args=data_args or None)
    given = with_pretrained_and_preset(given, pretrained, preset, resume,
                                       lambda: preset_options(preset, model))
    if config is None and resume is None:
        from medvit.recipes import with_recipe_defaults

        given = with_recipe_defaults(model, given)
    _fit(config_from_cli("seg", model, given, config))



def _fit(cfg) -> None:
    from engine import fit
    from engine.loop import raise_if_interrupted
    from medvit.task import SegTask

    result = fit(cfg, SegTask())
    typer.echo(f"run folder: {result.out}")
    raise_if_interrupted(result)  # a signal that ended the run: exit 128 + signal after saving


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------ weights without a run
def _opt_model():
    return typer.Option(None, "--model", help="With --pretrained: the weights' registry model (unetr, swin_unetr, "
                        "transunet, medt).")


def _opt_pretrained():
    return typer.Option(None, "--pretrained", help="A released weights file (MONAI, Google .npz, timm, vtk); the "
                        "test protocol comes from the model's registry entry.")


def _opt_roi():
    return typer.Option(None, "--roi", help="With --pretrained: sliding-window ROI edge (3D) or slice size (2D).")


def _opt_spacing():
    return typer.Option(None, "--spacing", help="With --pretrained: voxel spacing in mm the model expects, X,Y,Z.")


def _opt_a_min():
    return typer.Option(None, "--a-min", help="With --pretrained: intensity window low end (HU for CT).")


def _opt_a_max():
    return typer.Option(None, "--a-max", help="With --pretrained: intensity window high end.")


def _opt_num_classes():
    return typer.Option(None, "--num-classes", help="With --pretrained: classes incl. background (default: the "
                        "file's classifier).")


def _opt_class_names():
    return typer.Option(None, "--class-names", help="With --pretrained: names, background first: a file (one per "
                        "line) or a,b,c (default: the protocol dataset's, e.g. BTCV's organs).")


def _opt_model_arg():
    return typer.Option(None, "--model-arg", help="With --pretrained: KEY=VALUE model override.")


_PROTOCOL_OPTIONS = {"roi": "--roi", "spacing": "--spacing", "a_min": "--a-min", "a_max": "--a-max",
                     "num_classes": "--num-classes", "names": "--class-names", "model_arg": "--model-arg"}


def _refuse_with_model_file(model_file: Path, checkpoint, model, pretrained, protocol: dict) -> None:
    """``--model-file`` holds its model and protocol: any other source or protocol option exits 2."""
    from backbones.runtime import refuse_with_model_file

    refuse_with_model_file(model_file, {"--checkpoint": checkpoint, "--model": model, "--pretrained": pretrained,
                                        **{_PROTOCOL_OPTIONS[k]: v for k, v in protocol.items()}})


def _floats(text: Optional[str], option: str) -> Optional[List[float]]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _weights_or_run(checkpoint: Optional[Path], model: Optional[str], pretrained: Optional[Path], protocol: dict):
    """``--checkpoint RUN``, or ``--model NAME --pretrained FILE`` loaded with its protocol (an
    :class:`engine.pretrained.WeightsRun`, which the Predictor takes in place of a run)."""
    from engine.config import parse_key_values

    if checkpoint is not None:
        given = [_PROTOCOL_OPTIONS[k] for k, v in protocol.items() if v is not None and v != []] + (
            ["--model"] if model else []) + (["--pretrained"] if pretrained else [])
        if given:
            raise UserError(f"{given[0]}: only without --checkpoint (a run replays its own model and protocol)")
        return checkpoint
    if not model or not pretrained:
        raise UserError("give --checkpoint RUN, or --model NAME with --pretrained FILE")
    from engine.pretrained import describe
    from medvit.pretrained import weights_run

    from medvit.recipes import check_model_args

    p = dict(protocol)
    p["spacing"] = _floats(p["spacing"], "--spacing")
    p["model_args"] = parse_key_values(p.pop("model_arg"), "--model-arg")
    check_model_args(model, p["model_args"])
    run = weights_run(model, pretrained, **p)
    typer.echo(describe(run))
    return run


def _check_window_options(sw_batch_size: int, out: Optional[Path]) -> None:
    """``--sw-batch-size`` >= 1 and an ``--out`` that is not an existing file (eval and predict)."""
    if sw_batch_size < 1:
        raise UserError(f"--sw-batch-size {sw_batch_size}: must be an integer >= 1")
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out is an existing file, not a folder")


def _sources(checkpoints, model, pretraineds, protocol):
    """Every ``--checkpoint`` or ``--pretrained`` (several: an ensemble), each through :func:`_weights_or_run`."""
    checkpoints, pretraineds = list(checkpoints or []), list(pretraineds or [])
    if checkpoints:
        runs = [_weights_or_run(c, model, pretraineds[0] if pretraineds else None, protocol) for c in checkpoints]
    elif pretraineds:
        runs = [_weights_or_run(None, model, p, protocol) for p in pretraineds]
    else:
        runs = [_weights_or_run(None, model, None, protocol)]
    return runs if len(runs) > 1 else runs[0]


def _opt_tta():
    return typer.Option(False, "--tta/--no-tta", help="Mirroring test-time augmentation, averaged in probability "
                        "space, over the axes the run was trained to flip (all 2^3 / 2^2 flips unless it trained "
                        "with flip_prob=0).")


def _opt_tta_axes():
    return typer.Option(None, "--tta-axes", help="Mirror only these RAS axes, e.g. y,z (implies --tta; all, none).")


def _opt_stitch():
    return typer.Option("auto", "--stitch", help="auto, device or cpu: where the sliding-window output is stitched "
                        "(auto: on the GPU only when it fits).")


@seg_app.command("eval")
def evaluate(
    checkpoint: Optional[List[Path]] = typer.Option(None, "--checkpoint", help="Run folder or .safetensors file (or "
                                                    "--model NAME --pretrained FILE); repeat for an ensemble."),
    data: Optional[str] = typer.Option(None, "--data", help="Default: the run's --data."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: the run's --data-dir."),
    split: str = typer.Option("validation", "--split", help="validation, training or all."),
    overlap: float = typer.Option(0.5, "--overlap"),
    sw_batch_size: int = typer.Option(4, "--sw-batch-size"),
    mode: str = typer.Option("gaussian", "--mode", help="gaussian or constant window blending."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="Autocast (bf16 on CPU, fp16 on CUDA)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where the hardware multiplies it "
                                  "natively, else fp32), 32, bf16 or 16; probabilities and metrics stay fp32."),
    device: str = typer.Option("auto", "--device"),
    tolerance: float = typer.Option(2.0, "--nsd-tolerance", help="NSD tolerance in mm."),
    tta: bool = _opt_tta(),
    tta_axes: Optional[str] = _opt_tta_axes(),
    stitch: str = _opt_stitch(),
    postprocess: str = typer.Option("auto", "--postprocess", help="Which variant the report holds: lcc (largest "
                                    "component per class), none, or auto (the better one; both are shown)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Default: RUN/eval (eval-<weights file> with "
                                       "--pretrained)."),
    model: Optional[str] = _opt_model(),
    pretrained: Optional[List[Path]] = _opt_pretrained(),
    roi: Optional[int] = _opt_roi(),
    spacing: Optional[str] = _opt_spacing(),
    a_min: Optional[float] = _opt_a_min(),
    a_max: Optional[float] = _opt_a_max(),
    num_classes: Optional[int] = _opt_num_classes(),
    class_names: Optional[str] = _opt_class_names(),
    model_arg: Optional[List[str]] = _opt_model_arg(),
    model_file: Optional[Path] = typer.Option(None, "--model-file", help="A `vtk models export` file (.onnx runs "
                                              "in onnxruntime, .pt in TorchScript) with its protocol inside; needs "
                                              "--data and --data-dir."),
) -> None:
    """Sliding-window evaluation in each label's own grid: Dice, HD95 (mm), NSD per organ.

    Example: vtk seg eval --model swin_unetr --pretrained swin_unetr_btcv.pt --data btcv --data-dir DIR
    """
    from medvit.evaluate import default_eval_dir, evaluate_checkpoint, write_choice
    from medvit.metrics import write_reports

    _check_window_options(sw_batch_size, out)
    protocol = dict(roi=roi, spacing=spacing, a_min=a_min, a_max=a_max, num_classes=num_classes,
                    names=class_names, model_arg=model_arg)
    if model_file is not None:
        _refuse_with_model_file(model_file, checkpoint, model, pretrained, protocol)
        source = None
    else:
        source = _sources(checkpoint, model, pretrained, protocol)
    result = evaluate_checkpoint(source, data, data_dir, split, tolerance, device=device, overlap=overlap,
                                 sw_batch_size=sw_batch_size, mode=mode, amp=amp, precision=precision,
                                 tta=tta_axes if tta_axes is not None else tta, stitch=stitch,
                                 postprocess=postprocess, progress=True, model_file=model_file)
    first = model_file if model_file is not None else source[0] if isinstance(source, list) else source
    target = out or (default_eval_dir(checkpoint) if checkpoint else Path(f"eval-{Path(first).stem}"))
    write_reports(target, result.rows, result.summary, result.names)
    write_choice(target, result)
    _print_summary(result.summary, result.names, target)
    _print_postprocessing(result.summary)


def _print_summary(summary: dict, names, target: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("organ", "Dice", "HD95 (mm)", "NSD", "cases", title=f"{summary['cases']} case(s), "
                  f"mean Dice {_num(summary['mean_dice'])}, HD95 {_num(summary['mean_hd95'], 2)} mm, "
                  f"NSD {_num(summary['mean_nsd'])}")
    for n in names:
        o = summary["per_organ"][n]
        table.add_row(n, _num(o["dice"]), _num(o["hd95"], 2), _num(o["nsd"]), str(o["cases"]))
    Console(width=120).print(table)
    typer.echo(f"wrote {target}/metrics.json, per_case.csv, dice_per_organ.png")


def _print_postprocessing(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    pp = summary["postprocessing"]
    keys = [k for k in ("dice", "hd95", "nsd", "object_f1", "object_dice") if k in pp["none"]]
    labels = {"dice": "Dice", "hd95": "HD95 (mm)", "nsd": "NSD", "object_f1": "object F1", "object_dice": "object Dice"}
    table = Table("postprocessing", *[labels[k] for k in keys],
                  title=f"with and without largest-component postprocessing ({pp['cases']} {pp['split']} case(s))")
    for v, label in (("none", "none"), ("lcc", "largest component per class")):
        table.add_row(label, *[_num(pp[v][k], 2 if k == "hd95" else 3) for k in keys])
    Console(width=120).print(table)
    typer.echo(f"better on these cases: {pp['better']} ({pp['reason']}); the report holds "
               f"{summary['postprocess']}; vtk seg predict --postprocess auto uses {pp['better']}")


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


@seg_app.command("predict")
def predict(
    checkpoint: Optional[List[Path]] = typer.Option(None, "--checkpoint", help="Run folder or .safetensors file (or "
                                                    "--model NAME --pretrained FILE); repeat for an ensemble."),
    input: Path = typer.Option(..., "--input", help="A NIfTI, NRRD or MHA/MHD file, a DICOM series folder, or a "
                               "folder of them."),
    out: Path = typer.Option(..., "--out", help="Output folder for masks and overlays."),
    overlap: float = typer.Option(0.5, "--overlap"),
    sw_batch_size: int = typer.Option(4, "--sw-batch-size"),
    mode: str = typer.Option("gaussian", "--mode"),
    amp: bool = typer.Option(False, "--amp/--no-amp"),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where the hardware multiplies it "
                                  "natively, else fp32), 32, bf16 or 16; probabilities and metrics stay fp32."),
    device: str = typer.Option("auto", "--device"),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Write a PNG of 3 orthogonal mid-slices."),
    tta: bool = _opt_tta(),
    tta_axes: Optional[str] = _opt_tta_axes(),
    stitch: str = _opt_stitch(),
    postprocess: str = typer.Option("auto", "--postprocess", help="lcc (largest component per class), none, or "
                                    "auto (what vtk seg eval found better for this run; none if never evaluated)."),
    save_probabilities: Optional[str] = typer.Option(None, "--save-probabilities", help="Also write the class "
                                                     "probabilities in the input grid: npz (float16) or nifti "
                                                     "(uint16 scaled)."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID to read from a DICOM folder "
                                         "holding several series."),
    model: Optional[str] = _opt_model(),
    pretrained: Optional[List[Path]] = _opt_pretrained(),
    roi: Optional[int] = _opt_roi(),
    spacing: Optional[str] = _opt_spacing(),
    a_min: Optional[float] = _opt_a_min(),
    a_max: Optional[float] = _opt_a_max(),
    num_classes: Optional[int] = _opt_num_classes(),
    class_names: Optional[str] = _opt_class_names(),
    model_arg: Optional[List[str]] = _opt_model_arg(),
    model_file: Optional[Path] = typer.Option(None, "--model-file", help="A `vtk models export` file (.onnx runs "
                                              "in onnxruntime, .pt in TorchScript) with its protocol inside."),
) -> None:
    """Write masks in each input's own grid and format (NIfTI, NRRD, MHA; NIfTI for DICOM) plus PNG overlays.

    Under torchrun every rank predicts its share of the files. Example: vtk seg predict --model unetr
    --pretrained UNETR_model_best_acc.pth --input ct.nii.gz --out preds --tta
    """
    from engine.progress import WorkProgress
    from medvit.formats import volume_inputs
    from medvit.inference import Predictor, dist_rank, predict_files, shard

    from medvit.io import check_volume_header

    _check_window_options(sw_batch_size, out)
    files = volume_inputs(input)
    for f in files:  # every NIfTI header before the model is built: a forged one costs no memory
        if str(f).endswith((".nii", ".nii.gz")):
            check_volume_header(f)
    protocol = dict(roi=roi, spacing=spacing, a_min=a_min, a_max=a_max, num_classes=num_classes,
                    names=class_names, model_arg=model_arg)
    options = dict(tta=tta_axes if tta_axes is not None else tta, stitch=stitch, postprocess=postprocess)
    if model_file is not None:
        _refuse_with_model_file(model_file, checkpoint, model, pretrained, protocol)
        pred = Predictor.from_model_file(model_file, device, overlap, sw_batch_size, mode, amp, precision, **options)
    else:
        pred = Predictor(_sources(checkpoint, model, pretrained, protocol), device, overlap, sw_batch_size, mode,
                         amp, precision, **options)
    rank, world = dist_rank()
    prefix = f"rank {rank}/{world}: " if world > 1 else ""
    mine = shard(files, rank, world)
    typer.echo(f"{prefix}{len(mine)} of {len(files)} input(s); {pred.describe()}")
    with WorkProgress(len(mine), enabled=rank == 0) as bar:
        for r in predict_files(pred, files, out, overlay, probabilities=save_probabilities, series=series,
                               progress=bar):
            extra = f" + {r['overlay'].name}" if r["overlay"] is not None else ""
            extra += f" + {r['probs'].name}" if r["probs"] is not None else ""
            line = f"{prefix}{r['input'].name}: {r['mask']} {r['shape']}{extra}"
            bar.message(line) if rank == 0 else typer.echo(line)

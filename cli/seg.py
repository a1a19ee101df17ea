"""``vtk seg train|eval|predict`` and ``vtk data synth btcv`` / ``vtk data check btcv``.

Heavy imports (torch, monai, nibabel) happen inside the commands so ``vtk --help`` stays fast. Recipes follow
the papers: UNETR / Swin-UNETR (AdamW 1e-4, wd 1e-5, warmup-cosine, ROI 96), TransUNet (SGD 0.01, momentum 0.9,
wd 1e-4, poly, 224 x 224 slices), MedT (Adam 1e-3 -> AdamW here, wd 1e-5, 128 x 128).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from cli.apps import check_app, seg_app, synth_app
from engine.errors import UserError

__all__ = ["synth_btcv_cmd", "check_btcv_cmd", "train", "evaluate", "predict", "recipe_defaults"]

_MODELS = ("unetr", "swin_unetr", "transunet", "medt")
_IMG_SIZE = {"unetr": 96, "swin_unetr": 96, "transunet": 224, "medt": 128}
_RECIPES: Dict[str, Dict[str, Any]] = {
    "3d": dict(optimizer="adamw", lr=1e-4, weight_decay=1e-5, schedule="warmup-cosine", batch_size=1),
    "transunet": dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="poly", batch_size=24),
    "medt": dict(optimizer="adamw", lr=1e-3, weight_decay=1e-5, schedule="constant", batch_size=4),
}


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


@seg_app.command("train")
def train(
    model: Optional[str] = typer.Option(None, "--model", help=f"One of {', '.join(_MODELS)}."),
    data: Optional[str] = typer.Option(None, "--data", help="btcv, synapse, decathlon, folder or folder2d."),
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
) -> None:
    """Train a segmentation model on the shared engine (DiceCE loss, sliding-window validation)."""
    from engine.config import config_from_cli, parse_key_values

    model_args = parse_key_values(model_arg, "--model-arg")
    model_args.update({k: v for k, v in dict(feature_size=feature_size, num_classes=num_classes).items() if v})
    data_args = parse_key_values(data_arg, "--data-arg")
    data_args.update({k: v for k, v in dict(cache=cache, num_samples=num_samples, roi=img_size).items()
                      if v is not None})
    given = dict(data=data, data_dir=str(data_dir) if data_dir else None, max_steps=max_steps,
                 out=str(out) if out else None, resume=str(resume) if resume else None, batch_size=batch_size,
                 lr=lr, precision=precision, device=device, val_every=val_every, ckpt_every=ckpt_every,
                 num_workers=num_workers, seed=seed, warmup_steps=warmup_steps, quiet=quiet,
                 model_args=model_args or None, data_args=data_args or None)
    if config is None and resume is None:
        given = {**recipe_defaults(model, given.get("max_steps")), **{k: v for k, v in given.items() if v is not None}}
    cfg = config_from_cli("seg", model, given, config)
    cfg = finalize_config(cfg)
    _fit(cfg)


def recipe_defaults(model: Optional[str], max_steps: Optional[int]) -> Dict[str, Any]:
    """Optimiser/schedule defaults of the model's paper recipe (explicit options override them)."""
    if model is None:
        return {}
    key = model if model in ("transunet", "medt") else "3d"
    out = dict(_RECIPES[key], val_every=100, ckpt_every=100)
    if key == "3d":
        out["warmup_steps"] = max(0, (max_steps or 1000) // 100)
    return out


def finalize_config(cfg):
    """Fill model_args/data_args defaults that depend on the model and data (in_chans, roi, names, ...)."""
    from medvit.data.layouts import label_names
    from medvit.data.transforms import RECIPE_3D
    from medvit.task import spatial_dims_of

    if not cfg.data or not cfg.data_dir:
        raise UserError("--data and --data-dir are required (or --config FILE / --resume RUN)")
    ma, da = dict(cfg.model_args), dict(cfg.data_args)
    ma.setdefault("num_classes", _default_num_classes(cfg.data, cfg.data_dir))
    dims = spatial_dims_of(cfg.model, {})
    edge = da.get("roi") or ma.get("img_size") or _IMG_SIZE.get(cfg.model, 96)
    edge = edge[0] if isinstance(edge, (list, tuple)) else int(edge)
    ma.setdefault("img_size", edge)
    ma.setdefault("in_chans", _folder2d_channels(cfg.data_dir) if cfg.data == "folder2d" else 1)
    da.update(spatial_dims=dims, roi=[edge] * dims)
    window = (RECIPE_3D["a_min"], RECIPE_3D["a_max"]) if dims == 3 else (-125.0, 275.0)
    da.setdefault("a_min", window[0])
    da.setdefault("a_max", window[1])
    if dims == 3:
        da.setdefault("spacing", list(RECIPE_3D["spacing"]))
        da.setdefault("num_samples", RECIPE_3D["num_samples"])
    from_json = _datalist_names(cfg.data_dir, ma["num_classes"]) if cfg.data in ("decathlon", "folder") else None
    da.setdefault("names", from_json or list(label_names(cfg.data, ma["num_classes"])))
    cfg.model_args, cfg.data_args = ma, da
    return cfg.validate()


def _fit(cfg) -> None:
    from engine import fit
    from medvit.task import SegTask

    result = fit(cfg, SegTask().bind(cfg))
    if result is not None:
        typer.echo(f"run folder: {getattr(result, 'out', cfg.out)}")


def _default_num_classes(data: str, data_dir: str) -> int:
    if data == "btcv":
        return 14
    if data == "synapse":
        return 9
    if data == "folder2d":
        return 2
    js = Path(data_dir) / "dataset_0.json"
    if js.is_file():
        try:
            return len(json.loads(js.read_text()).get("labels", {})) or 2
        except ValueError:
            raise UserError(f"{js}: unreadable datalist") from None
    raise UserError(f"{data_dir}: no dataset_0.json with 'labels'; pass --num-classes")


def _datalist_names(data_dir: str, num_classes: int) -> Optional[List[str]]:
    """Class names from a decathlon datalist's ``labels`` when it names every class."""
    js = Path(data_dir) / "dataset_0.json"
    try:
        labels = json.loads(js.read_text()).get("labels", {}) if js.is_file() else {}
    except ValueError:
        return None
    names = [labels.get(str(i)) for i in range(num_classes)]
    return None if None in names else [str(n) for n in names]


def _folder2d_channels(data_dir: str) -> int:
    from medvit.data.layouts import resolve_splits
    from medvit.io import read_image2d

    train_items, _ = resolve_splits("folder2d", data_dir)
    return int(read_image2d(train_items[0]["image"]).shape[0])


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


@seg_app.command("eval")
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder or .safetensors file."),
    data: Optional[str] = typer.Option(None, "--data", help="Default: the run's --data."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: the run's --data-dir."),
    split: str = typer.Option("validation", "--split", help="validation, training or all."),
    overlap: float = typer.Option(0.5, "--overlap"),
    sw_batch_size: int = typer.Option(4, "--sw-batch-size"),
    mode: str = typer.Option("gaussian", "--mode", help="gaussian or constant window blending."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="Autocast (bf16 on CPU, fp16 on CUDA)."),
    device: str = typer.Option("auto", "--device"),
    tolerance: float = typer.Option(2.0, "--nsd-tolerance", help="NSD tolerance in mm."),
    out: Optional[Path] = typer.Option(None, "--out", help="Default: RUN/eval."),
) -> None:
    """Sliding-window evaluation in each label's own grid: Dice, HD95 (mm), NSD per organ."""
    from medvit.data.layouts import resolve_splits
    from medvit.inference import Predictor
    from medvit.metrics import summarize, write_reports

    pred = Predictor(checkpoint, device, overlap, sw_batch_size, mode, amp)
    kind, root = data or pred.cfg.data, data_dir or pred.cfg.data_dir
    if not kind or not root:
        raise UserError(f"{checkpoint}: the run records no dataset; pass --data and --data-dir")
    train_items, val_items = resolve_splits(kind, root)
    items = {"validation": val_items, "training": train_items, "all": train_items + val_items}.get(split)
    if items is None:
        raise UserError(f"--split {split!r}: choose validation, training or all")
    names = pred.names[1:] or [f"class {i}" for i in range(1, pred.num_classes)]
    rows = [_eval_case(pred, item, kind, tolerance) for item in items]
    summary = summarize(rows, names)
    summary.update(checkpoint=str(checkpoint), split=split, cases=len(rows), overlap=overlap, mode=mode,
                   nsd_tolerance_mm=tolerance, convention="both-empty organs are not counted; "
                   "a false positive or a miss scores Dice 0, NSD 0, HD95 = image diagonal (mm)")
    target = out or (Path(checkpoint) / "eval" if Path(checkpoint).is_dir() else Path(checkpoint).parent / "eval")
    write_reports(target, rows, summary, names)
    _print_summary(summary, names, target)


def _eval_case(pred, item: dict, kind: str, tolerance: float) -> dict:
    from medvit.data.layouts import SYNAPSE_FROM_BTCV, remap_labels
    from medvit.io import check_pair, read_image2d, read_nifti
    from medvit.metrics import case_metrics

    if kind == "folder2d":
        gt = read_image2d(item["label"], mask=True)
        mask = pred.predict_image2d(read_image2d(item["image"]))
        spacing = (1.0, 1.0)
    else:
        img, lab = read_nifti(item["image"]), read_nifti(item["label"])
        check_pair(img, lab)
        gt = _as_labels(lab.data)
        if kind == "synapse":
            gt = remap_labels(gt, SYNAPSE_FROM_BTCV)
        mask, spacing = pred.predict_nifti(img), lab.spacing
    m = case_metrics(mask.astype("int64"), gt, pred.num_classes, spacing, tolerance)
    return {"case": Path(item["image"]).name, **m}


def _as_labels(data):
    import numpy as np

    return np.rint(data).astype(np.int64)


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


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


@seg_app.command("predict")
def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder or .safetensors file."),
    input: Path = typer.Option(..., "--input", help="A .nii/.nii.gz file or a folder of them."),
    out: Path = typer.Option(..., "--out", help="Output folder for masks and overlays."),
    overlap: float = typer.Option(0.5, "--overlap"),
    sw_batch_size: int = typer.Option(4, "--sw-batch-size"),
    mode: str = typer.Option("gaussian", "--mode"),
    amp: bool = typer.Option(False, "--amp/--no-amp"),
    device: str = typer.Option("auto", "--device"),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Write a PNG of 3 orthogonal mid-slices."),
) -> None:
    """Write NIfTI masks in each input's own grid (same shape, affine and header) plus PNG overlays."""
    from medvit.inference import Predictor, save_overlay
    from medvit.io import read_nifti, write_nifti

    files = _nifti_inputs(input)
    pred = Predictor(checkpoint, device, overlap, sw_batch_size, mode, amp)
    for f in files:
        vol = read_nifti(f)
        mask = pred.predict_nifti(vol)
        stem = f.name[: -len(".nii.gz")] if f.name.endswith(".nii.gz") else f.stem
        dst = write_nifti(out / f"{stem}_seg.nii.gz", mask, vol.affine, vol.header)
        msg = f"{f.name}: {dst} {tuple(mask.shape)}"
        if overlay:
            window = (pred.kw["a_min"], pred.kw["a_max"])
            save_overlay(out / f"{stem}_overlay.png", vol, mask, pred.names or ["background"], window)
            msg += f" + {stem}_overlay.png"
        typer.echo(msg)


def _nifti_inputs(path: Path) -> list:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not files:
            raise UserError(f"{path}: no .nii/.nii.gz files")
        return files
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return [path]

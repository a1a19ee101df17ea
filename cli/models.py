"""``vtk models list``, ``vtk models info NAME`` and ``vtk models export``: every model of the ``backbones``,
``medvit`` and ``videovit`` registries, with parameter counts and FLOPs computed on the meta device (no memory, no
weights), and its export to ONNX / TorchScript (the logic lives in :mod:`backbones.export`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import typer

from cli.apps import models_app
from engine.errors import UserError

__all__ = ["list_cmd", "info_cmd", "export_cmd", "registries", "find_model"]

_PACKAGES = ("backbones", "medvit", "videovit")


def registries() -> List[Tuple[str, Any]]:
    """``(package, Registry)`` for each of the three packages that imports."""
    out = []
    for pkg in _PACKAGES:
        mod = importlib.import_module(pkg)
        out.append((pkg, mod.registry))
    return out


def find_model(name: str) -> Tuple[str, Any]:
    """The ``(package, registry)`` holding ``name``; a ``UserError`` suggests close names otherwise."""
    regs = registries()
    for pkg, reg in regs:
        if reg.is_model(name):
            return pkg, reg
    from engine.choices import close_matches_hint

    names = [n for _, reg in regs for n in [*reg.list_models(), *reg.aliases()]]
    hint = close_matches_hint(name, names) or "; see `vtk models list`"
    raise UserError(f"unknown model {name!r}{hint}")


def _family(reg: Any, name: str) -> str:
    return reg.entrypoint(name).__module__.rsplit(".", 1)[-1]


def _fmt(n: Optional[float], unit: str = "") -> str:
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


@models_app.command("list")
def list_cmd(pattern: str = typer.Argument("*", help="Shell-style name filter, e.g. 'vit*'."),
             params: bool = typer.Option(False, "--params", help="Also count parameters (builds each model on the "
                                         "meta device).")) -> None:
    """List registered models of backbones, medvit and videovit with their family.

    Example: vtk models list 'swin*' --params
    """
    from backbones._info import build_meta, count_params

    rows = []
    for pkg, reg in registries():
        for name in reg.list_models(pattern):
            row = [pkg, name, _family(reg, name)]
            if params:
                row.append(_fmt(count_params(build_meta(reg, name))))
            rows.append(row)
    if not rows:
        raise UserError(f"no model matches {pattern!r}; see `vtk models list`")
    header = ["registry", "model", "family"] + (["params"] if params else [])
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


@models_app.command("info")
def info_cmd(name: str = typer.Argument(..., help="A registered model name (see `vtk models list`)."),
             flops: bool = typer.Option(True, "--flops/--no-flops", help="Count FLOPs of one forward pass.")) -> None:
    """Parameters, FLOPs at the default input size, default input size and pretrained config of a model.

    Example: vtk models info vit_base_patch16_224
    """
    from backbones._info import build_meta, count_flops, count_params

    pkg, reg = find_model(name)
    model = build_meta(reg, name)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    n = count_params(model)
    rows = [("model", name), ("registry", pkg), ("family", _family(reg, name)), ("class", type(model).__name__),
            ("parameters", f"{n:,} ({_fmt(n)})"),
            ("trainable", f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")]
    rows.append(("input size", "x".join(str(s) for s in cfg["input_size"]) if "input_size" in cfg else "-"))
    if flops:
        f = count_flops(model)
        rows.append(("FLOPs (batch 1)", "-" if f is None else f"{_fmt(f)} ({_fmt(f / 2)} MACs)"))
    rows.append(("tiny overrides", str(reg.tiny_overrides(name)) or "{}"))
    rows += [(f"cfg.{k}", str(v)) for k, v in cfg.items() if k != "input_size"]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k.ljust(width)}  {v}")


def _export_source(model: Optional[str], checkpoint: Optional[Path], pretrained: Optional[Path],
                   model_args: Optional[List[str]], which: Optional[str]) -> Tuple[Any, Dict[str, Any]]:
    """``(model, metadata)`` from ``--checkpoint RUN`` or ``--model NAME [--pretrained FILE] [--model-arg K=V]``."""
    from backbones.export import prepare_export
    from engine import load_run
    from engine.config import parse_key_values

    if (model is None) == (checkpoint is None):
        raise UserError("pass exactly one of --checkpoint RUN and --model NAME")
    if checkpoint is not None:
        if pretrained is not None or model_args:
            raise UserError("--pretrained and --model-arg go with --model, not --checkpoint (the run records both)")
        cfg, state = load_run(checkpoint, which)
        pkg = {"seg": "medvit", "video": "videovit"}.get(cfg.task)
        reg = importlib.import_module(pkg).registry if pkg else find_model(cfg.model)[1]
        if not reg.is_model(cfg.model):
            raise UserError(f"{checkpoint}: model {cfg.model!r} of this {cfg.task} run is not registered in {pkg}")
        return prepare_export(reg, cfg.model, cfg=cfg, state_dict=state, source=str(checkpoint))
    if pretrained is not None and not pretrained.is_file():
        raise UserError(f"--pretrained {pretrained}: no such file")
    _, reg = find_model(model)
    return prepare_export(reg, model, pretrained=str(pretrained) if pretrained else None,
                          model_args=parse_key_values(model_args))


@models_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="Destination file (.onnx, or .pt/.ts for TorchScript)."),
    model: Optional[str] = typer.Option(None, "--model", help="A registered model name (see `vtk models list`)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A run folder or .safetensors file; "
                                              "its config gives the model and the test protocol."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Weights for --model (.pth, .npz, "
                                              ".safetensors, ...)."),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help="KEY=VALUE override for --model, "
                                                  "repeatable (e.g. num_classes=14)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="onnx or torchscript (default: from --out's suffix)."),
    which: Optional[str] = typer.Option(None, "--which", help="best or last checkpoint of a run folder."),
    dynamic_spatial: Optional[bool] = typer.Option(None, "--dynamic-spatial/--static-spatial", help="Default: "
                                                   "dynamic when the export matches PyTorch at half and twice the "
                                                   "input size."),
    atol: float = typer.Option(1e-4, "--atol", help="Largest accepted |export - PyTorch| on the check batch."),
) -> None:
    """Export a model to ONNX or TorchScript with dynamic batch and its test protocol in the file's metadata.

    The export is checked against PyTorch on a batch of 2 before the file is written (atomically).

    Example: vtk models export --checkpoint runs/seg-unetr --out unetr.onnx
    """
    from backbones.export import export_model, format_from_suffix
    from engine.choices import check_choice

    fmt = format_from_suffix(out, fmt)
    if which is not None:
        check_choice("--which", which, ("best", "last"))
    net, meta = _export_source(model, checkpoint, pretrained, model_arg, which)
    report = export_model(net, out, fmt, meta, dynamic_spatial=dynamic_spatial, atol=atol)
    size = "x".join(str(s) for s in meta["input_size"])
    space = "dynamic" if report.dynamic_spatial else "static"
    typer.echo(f"wrote {report.path} ({fmt}, {_fmt(report.bytes, 'B')}, {report.seconds:.1f} s): {meta['model']} "
               f"for N x {size} inputs (dynamic batch, {space} spatial size); max |{fmt} - PyTorch| = "
               f"{report.max_abs_diff:.2e} on a batch of 2")


@models_app.command("convert")
def convert_cmd(file: str = typer.Argument(..., help="A weights file: .pth/.pt/.pyth/.bin/.ckpt, .safetensors or "
                                            ".npz (timm, Google, MONAI, HF, pytorchvideo, PySlowFast, official)."),
                model: str = typer.Option(..., "--model", help="The registry model the weights belong to."),
                out: str = typer.Option(..., "--out", help="Folder to write (a run folder: checkpoints/best."
                                         "safetensors, config.yaml, pretrained_report.json)."),
                model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help="KEY=VALUE model override.")
                ) -> None:
    """Convert released weights into a vtk checkpoint that `--checkpoint` and engine.load_run read.

    Example: vtk models convert MVIT_B_16x4.pyth --model mvit --out runs/mvit-k400
    """
    from engine.config import parse_key_values
    from engine.pretrained import convert_weights, describe

    run, path = convert_weights(file, model, out, parse_key_values(model_arg, "--model-arg"))
    typer.echo(describe(run))
    typer.echo(f"wrote {path} (+ config.yaml, pretrained_report.json in {out})")

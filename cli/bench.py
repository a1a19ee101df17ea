"""``vtk bench ...``: run the benchmark scripts of ``benchmarks/`` (ratios against reference implementations)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Optional

import typer

from cli.apps import bench_app
from engine.errors import UserError

__all__ = ["bench_backbones", "run_benchmark_script"]

_BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark_script(script: str, argv: List[str]) -> int:
    """Load ``benchmarks/<script>.py`` from the source checkout and call its ``main(argv)``."""
    path = _BENCH_DIR / f"{script}.py"
    if not path.is_file():
        raise UserError(f"{path}: benchmark script not found (benchmarks ship with the source checkout, not the "
                        f"wheel)")
    spec = importlib.util.spec_from_file_location(f"vtk_bench_{script}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return int(mod.main(argv) or 0)


@bench_app.command("backbones")
def bench_backbones(model: str = typer.Option("all", "--model", help="Pair to run: vit (vs timm), vit3d (vs MONAI "
                                              "ViT) or all."),
                    steps: int = typer.Option(5, "--steps", help="Timed train steps per model."),
                    warmup: int = typer.Option(2, "--warmup", help="Untimed warm-up steps per model."),
                    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if "
                                                         "available).")) -> None:
    """Train-step time (forward+backward+AdamW) of vtk ViT vs timm and 3D ViT vs MONAI, with ratios.

    Example: vtk bench backbones --model vit --steps 10
    """
    if model not in ("all", "vit", "vit3d"):
        raise UserError(f"--model must be all, vit or vit3d, got {model!r}")
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    argv = ["--model", model, "--steps", str(steps), "--warmup", str(warmup)]
    rc = run_benchmark_script("backbones_train_step", argv + (["--device", device] if device else []))
    if rc:
        raise typer.Exit(rc)

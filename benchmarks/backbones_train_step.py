"""Train-step speed of vtk backbones against their reference implementations, side by side in one run.

One step = forward + backward + AdamW update. Each pair shares its weights (the reference state dict is loaded into
ours) and input; the two models alternate step by step (ABBA order) so machine load hits both alike. Reported:
median seconds per step (wall clock, and process CPU time, which other processes on a busy host disturb less) and
the ratios ours/reference (< 1 means vtk is faster).

Pairs:
    vit    vtk ``vit_small_patch16_224`` vs timm ``vit_small_patch16_224`` (224^2, batch 4 on CPU / 64 on CUDA)
    vit3d  vtk ``vit3d_base_patch16_96`` vs MONAI ``ViT`` (UNETR encoder: 96^3, patch 16, ViT-B, batch 1 / 4)

Usage::

    python benchmarks/backbones_train_step.py [--model vit|vit3d|all] [--steps 5] [--warmup 2] [--device cpu]
    vtk bench backbones --model all --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

__all__ = ["main", "bench_pair", "PAIRS"]


def _step_fn(model: nn.Module, x: torch.Tensor, out_fn: Callable) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out_fn(model, x).float().square().mean().backward()
        opt.step()

    return step


def _timed(step: Callable[[], None], device: torch.device) -> Tuple[float, float]:
    """Wall-clock and process CPU seconds of one step (CPU time is robust to other processes on a busy host)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t, c = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, time.process_time() - c


def bench_pair(ours: Callable[[], None], ref: Callable[[], None], steps: int, warmup: int,
               device: torch.device) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """Median (wall, CPU) step times of ``ours`` and ``ref``, interleaved ABBA after ``warmup`` steps of each."""
    for _ in range(warmup):
        ours(), ref()
    t_ours: List[Tuple[float, float]] = []
    t_ref: List[Tuple[float, float]] = []
    for i in range(steps):
        order = [(ours, t_ours), (ref, t_ref)] if i % 2 == 0 else [(ref, t_ref), (ours, t_ours)]
        for fn, acc in order:
            acc.append(_timed(fn, device))
    med = lambda ts: tuple(statistics.median(t[j] for t in ts) for j in range(2))  # noqa: E731
    return med(t_ours), med(t_ref)


def _pair_vit(device: torch.device) -> Tuple[str, Callable, Callable]:
    import timm
    from backbones import create_model
    batch = 64 if device.type == "cuda" else 4
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224").to(device).train()
    ours = create_model("vit_small_patch16_224", pretrained=ref.state_dict()).to(device).train()
    x = torch.randn(batch, 3, 224, 224, device=device)
    fwd = lambda m, x: m(x)  # noqa: E731
    return f"ViT-S/16 224 b{batch} vs timm", _step_fn(ours, x, fwd), _step_fn(ref, x, fwd)


def _pair_vit3d(device: torch.device) -> Tuple[str, Callable, Callable]:
    from monai.networks.nets import ViT
    from backbones import create_model
    batch = 4 if device.type == "cuda" else 1
    torch.manual_seed(0)
    ref = ViT(in_channels=1, img_size=96, patch_size=16, proj_type="conv").to(device).train()
    ours = create_model("vit3d_base_patch16_96", pretrained=ref.state_dict(), qkv_bias=False,
                        norm_eps=1e-5).to(device).train()
    x = torch.randn(batch, 1, 96, 96, 96, device=device)
    return (f"3D ViT-B/16 96^3 b{batch} vs MONAI ViT", _step_fn(ours, x, lambda m, x: m.forward_features(x)),
            _step_fn(ref, x, lambda m, x: m(x)[0]))


PAIRS: Dict[str, Callable[[torch.device], Tuple[str, Callable, Callable]]] = {"vit": _pair_vit, "vit3d": _pair_vit3d}


def run(models: Sequence[str], steps: int, warmup: int, device: str) -> List[Tuple[str, Tuple, Tuple]]:
    """Benchmark the named pairs; returns ``(label, (wall, cpu) ours, (wall, cpu) ref)`` rows, printing a table."""
    dev = torch.device(device)
    rows = []
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, steps {steps} "
          f"(+{warmup} warm-up), median s/step (wall clock; CPU = process CPU time)")
    print(f"{'pair':40s} {'vtk':>8s} {'ref':>8s} {'vtk/ref':>8s} {'CPU vtk':>8s} {'CPU ref':>8s} {'vtk/ref':>8s}")
    for name in models:
        label, ours, ref = PAIRS[name](dev)
        t_ours, t_ref = bench_pair(ours, ref, steps, warmup, dev)
        rows.append((label, t_ours, t_ref))
        print(f"{label:40s} {t_ours[0]:8.3f} {t_ref[0]:8.3f} {t_ours[0] / t_ref[0]:8.2f} "
              f"{t_ours[1]:8.3f} {t_ref[1]:8.3f} {t_ours[1] / t_ref[1]:8.2f}", flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="all", choices=["all", *PAIRS], help="which pair to run")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.steps < 1 or a.warmup < 0:
        p.error(f"--steps must be >= 1 and --warmup >= 0, got {a.steps} and {a.warmup}")
    run(list(PAIRS) if a.model == "all" else [a.model], a.steps, a.warmup, a.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())

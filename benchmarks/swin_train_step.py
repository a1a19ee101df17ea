"""Train-step time of vtk's Swin models against the reference implementations, side by side in one run.

* ``swin_unetr`` (vtk) vs MONAI ``SwinUNETR`` (Hatamizadeh et al., arXiv:2201.01266), same weights, same input.
* ``swin_tiny_patch4_window7_224`` (vtk) vs timm's (Liu et al., arXiv:2103.14030).

A step is forward + loss + backward + AdamW step. The two models alternate step by step after a warm-up, so load
changes on a shared machine hit both; the median wall time and the median CPU time of the process (the steadier
measure on a shared CPU box) are reported with the ratio vtk / reference (< 1 means vtk is faster)::

    python benchmarks/swin_train_step.py                       # CPU, Swin-UNETR f=24 at 64^3 and Swin-T at 224
    python benchmarks/swin_train_step.py --device cuda --amp   # bf16 autocast on a GPU
    python benchmarks/swin_train_step.py --only unetr --size 96 --feature-size 48 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["time_pair", "main"]


def _step_fn(model: nn.Module, x: torch.Tensor, target: torch.Tensor, amp: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            loss = F.cross_entropy(out.float(), target)  # (B, K) or (B, K, *S) logits
        loss.backward()
        opt.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def time_pair(ours: Callable[[], None], ref: Callable[[], None], steps: int,
              warmup: int) -> Dict[str, Tuple[float, float]]:
    """Median wall and process-CPU seconds per step of ``ours`` and ``ref``, alternating them step by step.

    On a shared machine the CPU time of this process is the steadier measure (other jobs inflate wall time);
    on a dedicated machine or a GPU, use wall time.
    """
    for _ in range(warmup):
        ours()
        ref()
    times: Dict[str, Dict[str, List[float]]] = {"wall": {"ours": [], "ref": []}, "cpu": {"ours": [], "ref": []}}
    for i in range(steps):
        order = (("ours", ours), ("ref", ref)) if i % 2 == 0 else (("ref", ref), ("ours", ours))
        for name, fn in order:
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times["wall"][name].append(time.perf_counter() - w0)
            times["cpu"][name].append(time.process_time() - c0)
    return {k: (statistics.median(v["ours"]), statistics.median(v["ref"])) for k, v in times.items()}


def _unetr_pair(args: argparse.Namespace, device: torch.device) -> Dict[str, object]:
    import medvit
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    ref = SwinUNETR(in_channels=1, out_channels=14, feature_size=args.feature_size).to(device)
    ours = medvit.create_model("swin_unetr", pretrained=ref.state_dict(), img_size=args.size, in_chans=1,
                               num_classes=14, feature_size=args.feature_size).to(device)
    x = torch.randn(args.batch, 1, args.size, args.size, args.size, device=device)
    y = torch.randint(0, 14, (args.batch, args.size, args.size, args.size), device=device)
    return dict(name=f"swin_unetr f={args.feature_size} {args.size}^3 b={args.batch}", ours=ours, ref=ref, x=x, y=y,
                ref_name="MONAI SwinUNETR")


def _swin2d_pair(args: argparse.Namespace, device: torch.device) -> Dict[str, object]:
    import timm

    from backbones import create_model

    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).to(device)
    ours = create_model("swin_tiny_patch4_window7_224", pretrained=ref.state_dict()).to(device)
    x = torch.randn(args.batch2d, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (args.batch2d,), device=device)
    return dict(name=f"swin_tiny 224 b={args.batch2d}", ours=ours, ref=ref, x=x, y=y, ref_name="timm")


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", choices=("unetr", "swin2d"), default=None)
    p.add_argument("--feature-size", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--batch2d", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    builders = {"unetr": _unetr_pair, "swin2d": _swin2d_pair}
    print(f"device={device} threads={torch.get_num_threads()} amp={args.amp} torch={torch.__version__}")
    for key, build in builders.items():
        if args.only not in (None, key):
            continue
        pair = build(args, device)
        res = time_pair(_step_fn(pair["ours"], pair["x"], pair["y"], args.amp),
                        _step_fn(pair["ref"], pair["x"], pair["y"], args.amp), args.steps, args.warmup)
        for clock, (t_ours, t_ref) in res.items():
            if clock == "cpu" and device.type == "cuda":
                continue
            print(f"{pair['name']} [{clock}]: vtk {t_ours * 1e3:.0f} ms  {pair['ref_name']} {t_ref * 1e3:.0f} ms  "
                  f"ratio vtk/ref {t_ours / t_ref:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train-step speed of vtk's UNETR against MONAI's ``UNETR`` at the same configuration, side by side.

Both models get the same weights (MONAI's state dict loaded into ours through the converter), the same input, the
same loss (mean squared logits) and an AdamW step. Steps alternate between the two models so that load changes
on a shared machine hit both alike; the script prints the median step time of each and the ratio
``ours / MONAI`` (below 1 = vtk faster).

Usage::

    python benchmarks/medvit_models.py                                # 64^3, ViT-S width, CPU
    python benchmarks/medvit_models.py --img-size 96 --embed-dim 768 --num-heads 12 --device cuda --amp
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

__all__ = ["main", "build_pair", "time_steps"]


def build_pair(args: argparse.Namespace) -> Dict[str, nn.Module]:
    """MONAI's UNETR and ours with identical weights (MONAI fixes 12 layers and 16^3 patches)."""
    from monai.networks.nets import UNETR as MonaiUNETR

    import medvit

    size = (args.img_size,) * 3
    torch.manual_seed(0)
    ref = MonaiUNETR(in_channels=1, out_channels=args.num_classes, img_size=size, feature_size=args.feature_size,
                     hidden_size=args.embed_dim, mlp_dim=4 * args.embed_dim, num_heads=args.num_heads,
                     proj_type="perceptron")
    ours = medvit.create_model("unetr", pretrained=ref.state_dict(), img_size=size, feature_size=args.feature_size,
                               embed_dim=args.embed_dim, num_heads=args.num_heads, num_classes=args.num_classes)
    return {"vtk": ours.to(args.device), "monai": ref.to(args.device)}


def _step_fn(model: nn.Module, x: torch.Tensor, amp: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if x.device.type == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp and x.device.type == "cuda")

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=amp):
            loss = model(x).float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(models: Dict[str, nn.Module], x: torch.Tensor, steps: int, warmup: int,
               amp: bool) -> Dict[str, List[float]]:
    """Alternate one train step of each model ``warmup + steps`` times; return the timed seconds per model."""
    fns = {name: _step_fn(m.train(), x, amp) for name, m in models.items()}
    times: Dict[str, List[float]] = {name: [] for name in models}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            _sync(str(x.device))
            t = time.perf_counter()
            fn()
            _sync(str(x.device))
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def main(argv: List[str] | None = None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--embed-dim", type=int, default=384)
    p.add_argument("--num-heads", type=int, default=6)
    p.add_argument("--feature-size", type=int, default=16)
    p.add_argument("--num-classes", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_pair(args)
    x = torch.randn(args.batch_size, 1, *(args.img_size,) * 3, device=args.device)
    times = time_steps(models, x, args.steps, args.warmup, args.amp)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"UNETR train step, {args.img_size}^3, hidden {args.embed_dim}, feature {args.feature_size}, "
          f"batch {args.batch_size}, {args.device}{' amp' if args.amp else ''}, {args.steps} steps (median):")
    for name, t in med.items():
        print(f"  {name:6s} {1000 * t:9.1f} ms")
    ratio = med["vtk"] / med["monai"]
    print(f"  ratio vtk/monai = {ratio:.3f} ({'vtk faster' if ratio < 1 else 'vtk slower'})")
    return dict(med, ratio=ratio)


if __name__ == "__main__":
    main()

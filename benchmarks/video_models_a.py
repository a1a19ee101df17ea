"""Train-step speed of vtk TimeSformer / ViViT against HF ``transformers``, measured side by side in one run.

Each pair shares the same weights (ours is loaded from the HF state dict through the vtk converters) and the same
input; steps alternate between the two models so background load hits both equally. A train step is forward,
cross-entropy, backward and an SGD step. Ratios are ``ours / HF`` step time (< 1: ours is faster).

Usage::

    python benchmarks/video_models_a.py                      # base widths at 8x112x112 (TimeSformer), 16x112 (ViViT)
    python benchmarks/video_models_a.py --size tiny --steps 20
    python benchmarks/video_models_a.py --device cuda --amp --batch 4 --img 224
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

__all__ = ["main"]

SIZES = {
    "tiny": dict(hidden=64, layers=2, heads=4),
    "small": dict(hidden=384, layers=12, heads=6),
    "base": dict(hidden=768, layers=12, heads=12),
}


def _pairs(size: str, img: int, frames_tsf: int, frames_vivit: int, classes: int) -> Dict[str, Tuple]:
    """``name -> (ours, hf, input (B-less) shape)`` with identical weights."""
    import transformers
    import videovit

    s = SIZES[size]
    common = dict(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                  intermediate_size=4 * s["hidden"], num_labels=classes, image_size=img)
    ours_kw = dict(img_size=img, embed_dim=s["hidden"], depth=s["layers"], num_heads=s["heads"], num_classes=classes,
                   drop_path_rate=0.0)
    hf_t = transformers.TimesformerForVideoClassification(
        transformers.TimesformerConfig(patch_size=16, num_frames=frames_tsf, **common))
    ours_t = videovit.create_model("timesformer_base_patch16_224", pretrained=hf_t.state_dict(),
                                   num_frames=frames_tsf, **ours_kw)
    hf_v = transformers.VivitForVideoClassification(
        transformers.VivitConfig(tubelet_size=[2, 16, 16], num_frames=frames_vivit, **common))
    ours_v = videovit.create_model("vivit_base_16x2_224", pretrained=hf_v.state_dict(), num_frames=frames_vivit,
                                   **ours_kw)
    return {
        f"TimeSformer-{size} divST {frames_tsf}x{img}": (ours_t, hf_t, (3, frames_tsf, img, img)),
        f"ViViT-{size} model 1 {frames_vivit}x{img}": (ours_v, hf_v, (3, frames_vivit, img, img)),
    }


def _step_fn(model: torch.nn.Module, hf: bool, amp: bool, device: torch.device) -> Callable:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with ctx():
            logits = model(pixel_values=x.transpose(1, 2)).logits if hf else model(x)  # HF: (B, T, C, H, W)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _bench_pair(ours, hf, shape, args, device) -> Tuple[float, float]:
    ours, hf = ours.to(device).train(), hf.to(device).train()
    x = torch.randn(args.batch, *shape, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    steps = {"ours": _step_fn(ours, False, args.amp, device), "hf": _step_fn(hf, True, args.amp, device)}
    times: Dict[str, List[float]] = {"ours": [], "hf": []}
    for i in range(args.warmup + args.steps):
        for name in (("ours", "hf") if i % 2 == 0 else ("hf", "ours")):  # alternate who goes first
            _sync(device)
            t0 = time.perf_counter()
            steps[name](x, y)
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return statistics.median(times["ours"]), statistics.median(times["hf"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--img", type=int, default=112)
    p.add_argument("--frames-timesformer", type=int, default=8)
    p.add_argument("--frames-vivit", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for both models")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    pairs = _pairs(args.size, args.img, args.frames_timesformer, args.frames_vivit, args.classes)
    print(f"device={device} batch={args.batch} amp={args.amp} steps={args.steps} (median step time, train mode)")
    print(f"{'config':40s} {'vtk ms':>9s} {'HF ms':>9s} {'vtk/HF':>7s} {'speedup':>8s}")
    for name, (ours, hf, shape) in pairs.items():
        t_ours, t_hf = _bench_pair(ours, hf, shape, args, device)
        print(f"{name:40s} {1e3 * t_ours:9.1f} {1e3 * t_hf:9.1f} {t_ours / t_hf:7.2f} {t_hf / t_ours:7.2f}x")


if __name__ == "__main__":
    main()

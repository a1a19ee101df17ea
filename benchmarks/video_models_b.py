"""Train-step speed of vtk's MViT against pytorchvideo's, side by side in one run (and VTN's temporal encoder
against HF ``LongformerModel`` with ``--vtn``).

MViT: Fan et al., "Multiscale Vision Transformers", arXiv:2104.11227. Both models are MViT-B 16x4's architecture
(pytorchvideo hub ``mvit_video_base_config``) at a reduced clip (default 8 x 112 x 112, batch 2) with the same
weights (ours loads pytorchvideo's state dict through the converter). Steps of the two models are interleaved
round by round so machine load affects both alike; the median step time is reported and the ratio
``ours / reference`` (< 1 means ours is faster).

Usage::

    python benchmarks/video_models_b.py                      # CPU, 8x112x112, batch 2
    python benchmarks/video_models_b.py --device cuda --frames 16 --size 224 --amp
    python benchmarks/video_models_b.py --vtn                # also VTN's Longformer encoder vs HF
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool) -> Callable[[], None]:
    """One SGD step on a fixed batch (forward, cross-entropy, backward, update)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    dtype = torch.bfloat16 if amp else torch.float32

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def compare(steps: Dict[str, Callable[[], None]], device: torch.device, warmup: int,
            rounds: int) -> Dict[str, Tuple[float, float]]:
    """(median, min) seconds per step of each callable, interleaved round by round (the minimum is the
    figure least disturbed by other jobs on a shared machine)."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def bench_mvit(args: argparse.Namespace, device: torch.device) -> None:
    from pytorchvideo.models.hub.vision_transformers import mvit_video_base_config
    from pytorchvideo.models.vision_transformers import create_multiscale_vision_transformers

    import videovit

    cfg = dict(mvit_video_base_config, spatial_size=args.size, temporal_size=args.frames)
    ref = create_multiscale_vision_transformers(**cfg).to(device).train()
    ours = videovit.create_model("mvit_base_16x4", pretrained=ref.state_dict(), img_size=args.size,
                                 num_frames=args.frames, drop_path_rate=0.0).to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 400, (args.batch,), generator=g).to(device)
    res = compare({"pytorchvideo": make_train_step(ref, x, y, args.amp), "vtk": make_train_step(ours, x, y, args.amp)},
                  device, args.warmup, args.rounds)
    _report(f"MViT-B train step, {args.batch}x3x{args.frames}x{args.size}x{args.size}", res, "pytorchvideo")


def bench_vtn_encoder(args: argparse.Namespace, device: torch.device) -> None:
    from transformers import LongformerConfig, LongformerModel

    from backbones.layers.local_global_attention import LocalGlobalEncoder

    n, dim = -(-args.vtn_frames // 18) * 18, 768  # a multiple of the window: HF's own padding needs word embeddings
    hf_cfg = LongformerConfig(hidden_size=dim, num_hidden_layers=3, num_attention_heads=12, intermediate_size=3072,
                              attention_window=[18] * 3, max_position_embeddings=max(288, n + 2), vocab_size=2,
                              pad_token_id=-1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = LongformerModel(hf_cfg, add_pooling_layer=False).to(device).train()
    ours = LocalGlobalEncoder(dim, depth=3, num_heads=12, attention_window=18).to(device).train()
    x = torch.randn(args.batch, n, dim, device=device)
    mask = torch.ones(args.batch, n, dtype=torch.long, device=device)
    gmask = torch.zeros_like(mask)
    gmask[:, 0] = 1

    def hf_loss() -> torch.Tensor:
        return ref(inputs_embeds=x, attention_mask=mask, global_attention_mask=gmask).last_hidden_state[:, 0].sum()

    def ours_loss() -> torch.Tensor:
        return ours(x)[:, 0].sum()

    steps = {}
    for name, model, fn in (("hf-longformer", ref, hf_loss), ("vtk", ours, ours_loss)):
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)

        def step(fn=fn, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            fn().backward()
            opt.step()

        steps[name] = step
    res = compare(steps, device, args.warmup, args.rounds)
    _report(f"VTN temporal encoder train step, {args.batch}x{n}x{dim}, window 18", res, "hf-longformer")


def _report(title: str, res: Dict[str, Tuple[float, float]], ref: str) -> None:
    print(title)
    for k, (med, best) in res.items():
        print(f"  {k:>14}: median {med * 1000:9.1f} ms/step   min {best * 1000:9.1f} ms/step")
    print(f"  ratio vtk / {ref}: median {res['vtk'][0] / res[ref][0]:.3f}, min {res['vtk'][1] / res[ref][1]:.3f}"
          f"  (< 1: vtk faster)")


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--vtn", action="store_true", help="also benchmark VTN's Longformer encoder against HF")
    p.add_argument("--vtn-frames", type=int, default=256)
    p.add_argument("--skip-mvit", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_mvit:
        bench_mvit(args, device)
    if args.vtn:
        bench_vtn_encoder(args, device)


if __name__ == "__main__":
    main()

"""Issue 14's two cheap speed fixes, each measured side by side with what it replaced, in one run.

1. ``optimizer``: one train step of a family with ``engine.optim.build_optimizer(..., fast=False)`` (the same
   AdamW parameter groups with torch's default implementation, on CPU the per-parameter loop: what vtk's engine
   built before) against ``build_optimizer`` (torch's fused AdamW kernel). Both start from the same weights; after ``--check-steps`` steps on the same batch the largest
   parameter difference between the two is printed (the same update, up to float rounding).
2. ``divided``: a TimeSformer train step whose divided space-time blocks run the layout of the code before the
   fix (:func:`divided_forward_before`: fold/unfold copies and three ``torch.cat`` per block) against the current
   :class:`~backbones.layers.DividedSpaceTimeBlock` (the unfold folded into the residual add, one ``cat`` in and
   one out). Same model object, same weights: only the block's ``forward`` differs. Logits and gradients of the
   two are compared before timing.

Steps are interleaved (the order flips every round) after warm-up; medians. ``x`` = before / after (> 1: faster).

Usage::

    nice python -m benchmarks.speed_fixes --fix optimizer,divided --size small
    nice python -m benchmarks.speed_fixes --fix divided --size full --precision bf16,32 --steps 3
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import types
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from benchmarks._common import interleaved  # noqa: E402
from benchmarks.train_step_suite import build_case, make_step  # noqa: E402

__all__ = ["main", "divided_forward_before", "optimizer_ab", "divided_ab"]


def divided_forward_before(blk: nn.Module, x: torch.Tensor, thw: Sequence[int]) -> torch.Tensor:
    """``DividedSpaceTimeBlock.forward`` as it was before issue 14 (kept here as the baseline): ``(B, P + T*N, C)``
    -> same shape."""
    from backbones.layers.divided_st_attention import fold_time, split_prefix, unfold_time

    T, H, W = thw
    cls, xt = split_prefix(x, thw)  # (B, P, C), (B, T*N, C)
    y = unfold_time(blk.temporal_attn(blk.temporal_norm1(fold_time(xt, thw))), thw)  # (B, T*N, C)
    xt = xt + blk.temporal_fc(blk.drop_path1(y))
    B, _, C = xt.shape
    P = cls.shape[1]
    y = xt.reshape(B * T, H * W, C)  # (B*T, N, C)
    if P:
        y = torch.cat([cls.expand(B, T, C).reshape(B * T, 1, C), y], dim=1)  # (B*T, 1+N, C)
    y = blk.attn(blk.norm1(y)).reshape(B, T, P + H * W, C)  # (B, T, P+N, C)
    res = y[:, :, P:].reshape(B, T * H * W, C)  # (B, T*N, C)
    if P:
        res = torch.cat([y[:, :, 0].mean(dim=1, keepdim=True), res], dim=1)
    x = torch.cat([cls, xt], dim=1) + blk.drop_path1(blk.ls1(res))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def _use_before(model: nn.Module) -> int:
    """Bind :func:`divided_forward_before` to every divided block of ``model``; returns how many."""
    from backbones.layers import DividedSpaceTimeBlock

    n = 0
    for m in model.modules():
        if isinstance(m, DividedSpaceTimeBlock):
            m.forward = types.MethodType(divided_forward_before, m)
            n += 1
    return n


def _max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def optimizer_ab(family: str, size: str, precision: str, steps: int, warmup: int, check_steps: int,
                 device: torch.device) -> Dict[str, object]:
    """Plain vs engine AdamW on one family: medians, ratio, and the parameter difference after ``check_steps``."""
    case = build_case(family, size)
    torch.manual_seed(0)
    plain = case.build_vtk(None).to(device).train()
    fused = copy.deepcopy(plain)
    fns = {"before": make_step(plain, case, precision, device, optimizer="engine-loop"),
           "after": make_step(fused, case, precision, device, optimizer="engine")}
    for _ in range(check_steps):
        fns["before"](), fns["after"]()
    diff = _max_param_diff(plain, fused)  # the same updates from the same start, up to rounding
    times = interleaved(fns, steps, warmup, device)
    return dict(fix="optimizer", family=family, config=case.config, precision=precision, times=times,
                speedup=times["before"] / times["after"], check_steps=check_steps, max_param_diff=diff,
                tensors=sum(1 for _ in plain.parameters()))


def divided_ab(size: str, precision: str, steps: int, warmup: int, device: torch.device) -> Dict[str, object]:
    """TimeSformer with the old vs the current divided block: medians, ratio, and logits/gradient agreement."""
    case = build_case("timesformer", size)
    torch.manual_seed(0)
    after = case.build_vtk(None).to(device).train()
    for blk in after.modules():  # a non-zero temporal_fc so the temporal branch reaches the logits
        if hasattr(blk, "temporal_fc"):
            nn.init.normal_(blk.temporal_fc.weight, std=0.02)
    before = copy.deepcopy(after)
    blocks = _use_before(before)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case.shape, generator=g).to(device)
    y = torch.randint(0, case.num_classes, (case.shape[0],), generator=g).to(device)
    grads: List[List[torch.Tensor]] = []
    logits = []
    for m in (before, after):
        m.zero_grad(set_to_none=True)
        out = m(x)
        F.cross_entropy(out.float(), y).backward()
        logits.append(out.detach())
        grads.append([p.grad.detach().clone() for p in m.parameters()])
    logit_diff = float((logits[0] - logits[1]).abs().max())
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(*grads))
    fns = {"before": make_step(before, case, precision, device), "after": make_step(after, case, precision, device)}
    times = interleaved(fns, steps, warmup, device)
    return dict(fix="divided", family="timesformer", config=case.config, precision=precision, blocks=blocks,
                times=times, speedup=times["before"] / times["after"], max_logit_diff_fp32=logit_diff,
                max_grad_diff_fp32=grad_diff)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fix", default="optimizer,divided", help="comma-separated: optimizer, divided")
    p.add_argument("--family", default="vit_b,timesformer", help="families of the optimizer comparison")
    p.add_argument("--size", default="small", choices=("tiny", "small", "full"))
    p.add_argument("--precision", default="bf16", help="comma-separated: 32, bf16")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--check-steps", type=int, default=3, help="optimizer steps before comparing the parameters")
    p.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    a = p.parse_args(argv)
    fixes = [f.strip() for f in a.fix.split(",") if f.strip()]
    precisions = [q.strip() for q in a.precision.split(",") if q.strip()]
    bad = [f for f in fixes if f not in ("optimizer", "divided")] + [q for q in precisions if q not in ("32", "bf16")]
    if bad or not fixes or not precisions or a.steps < 1 or a.warmup < 0:
        p.error(f"--fix in optimizer,divided, --precision in 32,bf16, --steps >= 1, --warmup >= 0; got {bad or a.fix}, "
                f"steps {a.steps}, warmup {a.warmup}")
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, size {a.size}, steps {a.steps} "
          f"(+{a.warmup} warm-up)", flush=True)
    results = []
    for prec in precisions:
        if "optimizer" in fixes:
            for fam in [f.strip() for f in a.family.split(",") if f.strip()]:
                results.append(optimizer_ab(fam, a.size, prec, a.steps, a.warmup, a.check_steps, device))
                print(json.dumps(results[-1]), flush=True)
        if "divided" in fixes:
            results.append(divided_ab(a.size, prec, a.steps, a.warmup, device))
            print(json.dumps(results[-1]), flush=True)
    print("| fix | config | precision | before s | after s | x | check |\n|---|---|---|---|---|---|---|")
    for r in results:
        check = (f"max param diff {r['max_param_diff']:.1e} after {r['check_steps']} steps" if r["fix"] == "optimizer"
                 else f"fp32 max diff logits {r['max_logit_diff_fp32']:.1e}, grads {r['max_grad_diff_fp32']:.1e}")
        print(f"| {r['fix']} | {r['config']} | {r['precision']} | {r['times']['before']:.3f} | "
              f"{r['times']['after']:.3f} | {r['speedup']:.2f} | {check} |")
    if a.json:
        from engine.io import atomic_write_json

        atomic_write_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

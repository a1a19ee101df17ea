"""What stands between a bf16 train step and the matrix rate: the step's time budget, matmul by matmul (issue 14).

MFU is the step's model FLOP/s over the rate of one large matrix multiply (2048^3 ``mm``, the suite's probe). A
step falls short of it for two reasons, and this script measures both in one process:

1. **Its matrix multiplies are smaller than the probe's.** Every ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` (and
   CPU flash attention call) of one
   profiled step is rebuilt with its recorded shapes, strides and dtypes and timed alone (best of a few runs,
   operands in cache as far as they fit). The sum is the time the step would take if it were nothing but its
   matmuls, each at its own best rate: the MFU ceiling that no change outside the matmuls can lift.
2. **Everything else**: the same matmuls inside the step (slower than alone: cold caches, page faults), casts,
   softmax / GELU / LayerNorm, layout copies, the optimizer, grouped as ``benchmarks.profile_bf16`` groups them
   (self CPU time of one profiled step).

The step is vtk's default, as ``vtk ... train`` runs it: ``--precision auto`` (bf16 where the CPU has it natively,
else fp32, whose attention runs SDPA's CPU flash kernel: rebuilt and timed alone too), the engine's fused AdamW and
its C heap policy.

Usage::

    nice python -m benchmarks.mfu_budget --family vit_b --size full --json vit_b_budget.json --out budget.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from benchmarks._common import (_cpu_flash_backward_flops, _cpu_flash_flops, count_flops, matrix_rate,  # noqa: E402
                                timed)
from benchmarks.profile_bf16 import _group  # noqa: E402
from benchmarks.train_step_suite import build_case, build_models, make_step  # noqa: E402

__all__ = ["MATMULS", "REBUILT", "budget", "main", "matmul_calls", "matmul_flops", "standalone_ms"]

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"  # SDPA's CPU kernel (fp32 steps), and its backward
FLASH_BACKWARD = FLASH + "_backward"
_OPERANDS = {"aten::addmm": 3, "aten::baddbmm": 3, FLASH: 3, FLASH_BACKWARD: 6}  # tensor inputs recorded
REBUILT = MATMULS + (FLASH, FLASH_BACKWARD)
_DTYPES = {"c10::BFloat16": torch.bfloat16, "float": torch.float32, "c10::Half": torch.float16,
           "double": torch.float64}
Call = Tuple[str, Tuple[Tuple[int, ...], ...], Tuple[Tuple[int, ...], ...], Tuple[str, ...]]


def matmul_calls(events) -> Dict[Call, List[float]]:
    """``{(op, shapes, strides, dtypes): [calls, self ms]}`` of the matmul events of a ``record_shapes`` profile
    (the tensor operands only: bias, ``mat1``, ``mat2``; scalars dropped)."""
    calls: Dict[Call, List[float]] = {}
    for e in events:
        if e.name not in REBUILT:
            continue
        n = _OPERANDS.get(e.name, 2)
        key = (e.name, tuple(tuple(s) for s in e.input_shapes[:n]),
               tuple(tuple(s) for s in e.structured_input_strides[:n]), tuple(e.input_dtypes[:n]))
        row = calls.setdefault(key, [0, 0.0])
        row[0] += 1
        row[1] += e.self_cpu_time_total / 1e3
    return calls


def matmul_flops(op: str, shapes: Sequence[Sequence[int]]) -> int:
    """FLOPs of one call (2 per multiply-add): ``(.., M, K) @ (.., K, N)``; SDPA's CPU kernels as
    :func:`benchmarks._common.flop_counter` counts them."""
    if op == FLASH:
        return _cpu_flash_flops(*shapes[:3])
    if op == FLASH_BACKWARD:
        return _cpu_flash_backward_flops(*shapes[:4])
    a, b = shapes[-2], shapes[-1]
    lead = a[0] if op in ("aten::bmm", "aten::baddbmm") else 1
    return 2 * lead * a[-2] * a[-1] * b[-1]


def _operand(shape: Sequence[int], stride: Sequence[int], dtype: str) -> torch.Tensor:
    """A tensor with the recorded shape, strides and dtype (its storage just large enough)."""
    t = torch.empty_strided(tuple(shape), tuple(stride), dtype=_DTYPES.get(dtype, torch.float32))
    return t.normal_() if t.numel() else t


def standalone_ms(call: Call, reps: int = 5) -> float:
    """Best time of one matmul call rebuilt from the profile, alone (ms)."""
    op, shapes, strides, dtypes = call
    args = [_operand(s, st, d) for s, st, d in zip(shapes, strides, dtypes)]
    if op == FLASH_BACKWARD:  # (grad_out, q, k, v, out, logsumexp): out and logsumexp of these q, k, v
        args[4:6] = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(*args[1:4])
        fn = partial(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward, dropout_p=0.0,
                     is_causal=False)
    else:
        fn = getattr(torch.ops.aten, op.split("::")[1])
    fn(*args)
    return 1e3 * min(timed(lambda: fn(*args), torch.device("cpu")) for _ in range(reps))


def _profile(step) -> Tuple[Dict[Call, List[float]], Dict[str, float], List[Dict[str, Any]]]:
    """Matmul calls, self ms per group and the other ops by input shape (largest first) of one profiled call of
    ``step``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    groups: Dict[str, float] = {}
    others = []
    for e in prof.key_averages(group_by_input_shape=True):
        g = "matmul" if e.key in REBUILT else _conv_or(_group(e.key))
        ms = e.self_cpu_time_total / 1e3
        groups[g] = groups.get(g, 0.0) + ms
        if g != "matmul":
            others.append(dict(group=g, op=e.key, shapes=[list(s) for s in e.input_shapes if s], calls=e.count, ms=ms))
    others.sort(key=lambda r: -r["ms"])
    return matmul_calls(prof.events()), groups, others


def _conv_or(group: str) -> str:
    """profile_bf16's ``matmul`` group without the matmuls is the convolutions."""
    return "convolution" if group == "matmul" else group


def budget(family: str, size: str, steps: int = 3, device: torch.device = torch.device("cpu"),
           rate: Optional[float] = None) -> Dict[str, Any]:
    """The time budget of vtk's default train step of ``family`` at ``size`` (see the module docstring)."""
    from engine.config import TrainConfig
    from engine.context import resolve_precision
    from engine.heap import set_cpu_heap

    precision = resolve_precision("auto", device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rate = rate or matrix_rate(dtype, device)
    case = build_case(family, size)
    vtk, _ = build_models(case, device)
    model_flops = count_flops(make_step(vtk, case, "32", device))
    step = make_step(vtk, case, precision, device, optimizer="engine")
    set_cpu_heap(TrainConfig().cpu_heap)
    try:
        step()
        step()
        wall = statistics.median(timed(step, device) for _ in range(steps))
        calls, groups, others = _profile(step)
    finally:
        set_cpu_heap("system")
    rows = []
    for call, (n, ms) in sorted(calls.items(), key=lambda kv: -kv[1][1]):
        alone = standalone_ms(call)
        fl = matmul_flops(call[0], call[1])
        rows.append(dict(op=call[0], shapes=call[1], strides=call[2], dtypes=call[3], calls=n, step_ms=ms,
                         alone_ms=alone * n, gflop=fl * n / 1e9, alone_rate_pct=100 * fl / (alone / 1e3) / rate))
    alone_total = sum(r["alone_ms"] for r in rows)
    executed = sum(r["gflop"] for r in rows) * 1e9
    # FLOPs of the ops not rebuilt (convolutions: the fp32 patch embedding, the 3D decoders) count at their
    # in-step time, so the ceiling never assumes them free
    unrebuilt = count_flops(step) - executed
    ceiling_ms = alone_total + (groups.get("convolution", 0.0) if unrebuilt > 0 else 0.0)
    return dict(family=family, config=case.config, size=size, precision=precision, rate_gflops=rate / 1e9,
                wall_s=wall, model_gflop=model_flops / 1e9, executed_matmul_gflop=executed / 1e9,
                unrebuilt_gflop=unrebuilt / 1e9, mfu=model_flops / wall / rate,
                mfu_ceiling=model_flops / (ceiling_ms / 1e3) / rate,
                matmul_alone_rate_pct=100 * executed / (alone_total / 1e3) / rate,
                matmul_alone_ms=alone_total, groups_ms=groups, profiled_ms=sum(groups.values()), matmuls=rows,
                other_ops=others[:40])


def format_budget(b: Dict[str, Any], top: int = 12) -> str:
    """Markdown: the budget table and the largest matmuls with their standalone rate."""
    g, total = dict(b["groups_ms"]), b["profiled_ms"]
    step_mm = g.pop("matmul", 0.0)
    lines = [f"**{b['config']}**, vtk default ({b['precision']}): step {b['wall_s']:.3f} s, model "
             f"{b['model_gflop']:.1f} GFLOP, MFU {b['mfu']:.0%} of {b['rate_gflops']:.0f} GFLOP/s (2048^3 mm)",
             "", "| where the profiled step goes | ms | share |", "|---|---|---|",
             f"| matmuls, each at its standalone rate ({b['executed_matmul_gflop']:.1f} GFLOP executed at "
             f"{b['matmul_alone_rate_pct']:.0f}% of the probe) | {b['matmul_alone_ms']:.0f} | "
             f"{b['matmul_alone_ms'] / total:.0%} |",
             f"| the same matmuls in the step, above their standalone time | {step_mm - b['matmul_alone_ms']:.0f} | "
             f"{(step_mm - b['matmul_alone_ms']) / total:.0%} |"]
    lines += [f"| {k} | {v:.0f} | {v / total:.0%} |" for k, v in sorted(g.items(), key=lambda kv: -kv[1])]
    lines += [f"| total (profiled; unprofiled step {1e3 * b['wall_s']:.0f} ms) | {total:.0f} | 100% |", "",
              "MFU ceiling with nothing but the matmuls at their standalone rate"
              + (f" (and the convolutions' {b['unrebuilt_gflop']:.1f} GFLOP at their in-step time)"
                 if b.get("unrebuilt_gflop", 0) > 0 else "") + f": **{b['mfu_ceiling']:.0%}**.", "",
              "| matmul | calls | GFLOP | in step ms | alone ms | alone rate |", "|---|---|---|---|---|---|"]
    for r in b["matmuls"][:top]:
        shapes = " x ".join(_operand_str(s, st) for s, st in zip(r["shapes"], r["strides"]))
        lines.append(f"| `{r['op'][6:]}` {shapes} | {r['calls']} | {r['gflop']:.1f} | {r['step_ms']:.0f} | "
                     f"{r['alone_ms']:.0f} | {r['alone_rate_pct']:.0f}% |")
    lines += ["", "| largest other ops | group | calls | ms |", "|---|---|---|---|"]
    lines += [f"| `{r['op'][6:] if r['op'].startswith('aten::') else r['op']}` "
              f"{' '.join(str(tuple(s)) for s in r['shapes'][:2])} | {r['group']} | {r['calls']} | {r['ms']:.1f} |"
              for r in b["other_ops"][:top]]
    return "\n".join(lines) + "\n"


def _operand_str(shape: Sequence[int], stride: Sequence[int]) -> str:
    """``(M, K)``, with ``^T`` for a transposed view (unit stride on the second-last dim)."""
    t = len(shape) >= 2 and stride[-1] != 1 and stride[-2] == 1
    return str(tuple(shape)) + ("^T" if t else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="vit_b")
    p.add_argument("--size", default="full", choices=("tiny", "small", "full"))
    p.add_argument("--steps", type=int, default=3, help="unprofiled steps timed (median)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the markdown here (atomically)")
    a = p.parse_args(argv)
    from engine.io import atomic_write_text

    torch.manual_seed(0)
    parts, results = [], []
    for fam in [f.strip() for f in a.family.split(",") if f.strip()]:
        results.append(budget(fam, a.size, a.steps))
        parts.append(format_budget(results[-1]))
        print(parts[-1], flush=True)
    if a.out:
        atomic_write_text(a.out, f"<!-- python -m benchmarks.mfu_budget --family {a.family} --size {a.size} -->\n\n"
                          + "\n".join(parts))
    if a.json:
        atomic_write_text(a.json, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a bf16 train step goes: ``torch.profiler`` (CPU) on one step of vtk and of its reference, ops grouped.

Groups (self CPU time of the aten ops): matmul (``mm``/``addmm``/``bmm``/``baddbmm``), attention (SDPA and its
flash/math kernels and backward), casts (``_to_copy``/``copy_`` that autocast inserts), norm (LayerNorm and its
backward), activation (GELU, softmax), layout (``clone``/``contiguous``/``cat``/``index`` copies), optimizer
(AdamW's ``_foreach`` ops), other. The share of matmul is the ceiling of MFU: everything else is time the matrix
units sit idle.

Usage::

    nice python -m benchmarks.profile_bf16 --family vit_b,timesformer --size small --out /tmp/profile.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from benchmarks.train_step_suite import build_case, build_models, make_step  # noqa: E402

__all__ = ["main", "profile_step", "GROUPS"]

GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn", "aten::mkldnn",
               "aten::convolution", "aten::mkldnn_convolution", "aten::_convolution", "aten::convolution_backward"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_efficient_attention",
                  "aten::_flash_attention"),
    "casts": ("aten::_to_copy", "aten::copy_", "aten::to"),
    "norm": ("aten::native_layer_norm", "aten::layer_norm", "aten::native_layer_norm_backward",
             "aten::native_group_norm", "aten::native_batch_norm"),
    "activation": ("aten::gelu", "aten::gelu_backward", "aten::_softmax", "aten::_softmax_backward_data",
                   "aten::softmax", "aten::relu", "aten::threshold_backward"),
    "layout": ("aten::clone", "aten::contiguous", "aten::cat", "aten::index", "aten::_unsafe_view", "aten::stack",
               "aten::constant_pad_nd", "aten::roll"),
    "optimizer": ("aten::_foreach", "aten::_fused_adamw"),
}


def _group(name: str) -> str:
    for g, prefixes in GROUPS.items():
        if any(name.startswith(p) for p in prefixes):
            return g
    return "other"


def profile_step(step, top: int = 12) -> Dict[str, object]:
    """Profile one call of ``step`` (after one warm-up call): self CPU ms per group and the ``top`` ops."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    groups: Dict[str, float] = {}
    ops: List[tuple] = []
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1e3
        if ms <= 0:
            continue
        groups[_group(e.key)] = groups.get(_group(e.key), 0.0) + ms
        ops.append((e.key, ms, e.count))
    ops.sort(key=lambda o: -o[1])
    return dict(groups=groups, total_ms=sum(groups.values()), top=ops[:top])


def _table(label: str, res: Dict[str, object]) -> str:
    total = res["total_ms"]
    lines = [f"**{label}**: {total:.0f} ms self CPU", "", "| group | ms | share |", "|---|---|---|"]
    for g, ms in sorted(res["groups"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {g} | {ms:.0f} | {ms / total:.0%} |")
    lines += ["", "| top op | ms | calls |", "|---|---|---|"]
    lines += [f"| `{k}` | {ms:.0f} | {n} |" for k, ms, n in res["top"]]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="vit_b,timesformer")
    p.add_argument("--size", default="small", choices=("tiny", "small", "full"))
    p.add_argument("--precision", default="bf16", choices=("32", "bf16"))
    p.add_argument("--optimizer", default="engine", choices=("engine", "plain"),
                   help="vtk's step: the engine's optimizer (fused AdamW) or torch.optim.AdamW's default; the "
                        "reference always runs torch.optim.AdamW")
    p.add_argument("--out", type=Path, default=None, help="write the markdown here (atomically)")
    a = p.parse_args(argv)
    dev = torch.device("cpu")
    parts = []
    for fam in [f.strip() for f in a.family.split(",") if f.strip()]:
        case = build_case(fam, a.size)
        vtk, ref = build_models(case, dev)
        for label, model, fwd, opt in (("vtk", vtk, None, a.optimizer),
                                       (case.reference or "reference", ref, case.ref_fwd, "plain")):
            if model is None:
                continue
            res = profile_step(make_step(model, case, a.precision, dev, fwd, optimizer=opt))
            parts.append(_table(f"{case.config}, {a.precision}, {label}", res))
            print(parts[-1], flush=True)
    if a.out:
        from engine.io import atomic_write_text

        atomic_write_text(a.out, f"<!-- python -m benchmarks.profile_bf16 --family {a.family} --size {a.size} "
                                 f"--precision {a.precision} --optimizer {a.optimizer} -->\n\n" + "\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

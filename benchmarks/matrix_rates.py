"""Matrix-multiply rate of this device per dtype, and whether each dtype is native or emulated here.

``--precision auto`` picks bf16 only where the device multiplies it natively (CUDA with bf16; a CPU with
avx512_bf16 or AMX). This measures what that rule rests on: the FLOP/s of a square ``mm`` in fp32, bf16 and fp16
(:func:`benchmarks._common.matrix_rate`, the suite's MFU denominator: 2048^3, halved on a CPU until one product
takes under 0.5 s, so an emulated dtype costs seconds, not minutes), each as a ratio to fp32, with what
:mod:`engine.context` says of it. On the issue's AMD EPYC (avx512_bf16) bf16 ran at 4.2x fp32; on an AVX2 EPYC,
which only emulates it, at 1/80.

Usage::

    python -m benchmarks.matrix_rates --json rates.json
    vtk bench matrix-rate --dtypes 32,bf16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from benchmarks._common import matrix_rate, matrix_size  # noqa: E402

__all__ = ["DTYPES", "main", "measure", "format_rates"]

DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}
_PRECISION = {"32": "32", "bf16": "bf16", "16": "16-mixed"}  # the engine's name of each


def _support(key: str, device: torch.device) -> str:
    """``native`` or ``emulated`` (with why) for the dtype ``key`` on ``device``."""
    from engine.context import EMULATED_WHY, emulation_note

    if key == "32":
        return "native"
    if device.type == "cuda" and key == "bf16" and not torch.cuda.is_bf16_supported():
        return "emulated (this GPU has no bf16)"
    if emulation_note(_PRECISION[key], device) is None:
        return "native"
    return f"emulated ({EMULATED_WHY[_PRECISION[key]]})"


def measure(keys: Sequence[str], device: torch.device, n: int = 2048, reps: int = 5) -> Dict[str, Any]:
    """``{"device", "auto", "rows": [{dtype, n, gflops, vs_fp32, support}]}`` for the dtypes ``keys``."""
    from engine.context import resolve_precision

    rows: List[Dict[str, Any]] = []
    for key in keys:
        dtype = DTYPES[key]
        used = matrix_size(dtype, device, n, 0.5)
        rate = matrix_rate(dtype, device, n=used, reps=reps, budget_s=float("inf"))  # at `used`, not halved again
        rows.append(dict(dtype=key, n=used, gflops=rate / 1e9, support=_support(key, device)))
    fp32 = next((r["gflops"] for r in rows if r["dtype"] == "32"), None)
    for r in rows:
        r["vs_fp32"] = r["gflops"] / fp32 if fp32 else None
    return dict(device=str(device), capability=str(getattr(torch.backends.cpu, "get_cpu_capability", str)()),
                auto=resolve_precision("auto", device), rows=rows)


def format_rates(res: Dict[str, Any]) -> str:
    """Markdown table and the line saying what ``--precision auto`` picks."""
    lines = [f"device {res['device']} (CPU capability {res['capability']}); --precision auto picks "
             f"**{res['auto']}** here", "", "| dtype | n | GFLOP/s | vs fp32 | here |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        ratio = "-" if r["vs_fp32"] is None else f"{r['vs_fp32']:.2f}x"
        lines.append(f"| {r['dtype']} | {r['n']} | {r['gflops']:.1f} | {ratio} | {r['support']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="32,bf16,16", help="comma-separated: 32, bf16, 16 (default all three)")
    p.add_argument("--n", type=int, default=2048, help="matrix edge (halved on a CPU for an emulated dtype)")
    p.add_argument("--reps", type=int, default=5, help="timed products per dtype (median)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None, help="write the result here (atomically)")
    a = p.parse_args(argv)
    keys = [k.strip() for k in a.dtypes.split(",") if k.strip()]
    bad = [k for k in keys if k not in DTYPES]
    if bad or not keys:
        p.error(f"--dtypes: {bad[0] if bad else a.dtypes!r} is not one of {', '.join(DTYPES)}")
    if a.n < 256 or a.reps < 1:
        p.error(f"--n must be >= 256 and --reps >= 1, got {a.n} and {a.reps}")
    res = measure(keys, torch.device(a.device), a.n, a.reps)
    print(format_rates(res), end="", flush=True)
    if a.json:
        from engine.io import atomic_write_text

        atomic_write_text(a.json, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

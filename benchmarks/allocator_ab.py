"""What glibc's page faults cost a train step: malloc defaults against heap retention, in one process (issue 14).

PyTorch's CPU allocator is plain ``malloc``; glibc serves large blocks with ``mmap`` and gives freed ones back to
the kernel, so every step faults its activations, casts and gradients in again (zeroed pages, system time).
``mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD)`` keeps freed memory in the heap instead (``engine.heap``, the
engine's ``TrainConfig.cpu_heap``). The two policies are set (untimed) before each step (``system`` also gives the
heap back with ``malloc_trim``), interleaved, for vtk's bf16 step and the reference's fp32 step.

First, before any ``mallopt`` call, each step is timed on glibc's own heap (``+glibc``, not interleaved): glibc
raises its mmap threshold as the process frees large blocks, and once a threshold has been set (``system``
included) it no longer does, so ``system`` is stricter than a script that never calls ``mallopt``.

Usage::

    nice python -m benchmarks.allocator_ab --family vit_b --size full --steps 3
"""

from __future__ import annotations

import argparse
import resource
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from benchmarks._common import interleaved  # noqa: E402
from benchmarks.train_step_suite import FAMILIES, SIZES, build_case, build_models, make_step  # noqa: E402
from engine.heap import set_cpu_heap  # noqa: E402


def faults(fn: Callable[[], None]) -> Tuple[int, float]:
    """Minor page faults and system seconds of one call."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="vit_b", choices=list(FAMILIES))
    p.add_argument("--size", default="full", choices=SIZES)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)
    dev = torch.device("cpu")
    case = build_case(a.family, a.size)
    vtk, ref = build_models(case, dev)
    vtk_step = make_step(vtk, case, "bf16", dev, optimizer="engine")
    fns = {"vtk/default": vtk_step, "vtk/default+retain": vtk_step}
    if ref is not None:
        ref_step = make_step(ref, case, "32", dev, case.ref_fwd, optimizer="plain")
        fns.update({"ref/32": ref_step, "ref/32+retain": ref_step})
    glibc = {f"{n}+glibc": interleaved({n: fns[n]}, steps=a.steps, warmup=1, device=dev)[n]
             for n in fns if not n.endswith("+retain")}  # before any mallopt call
    for name, s in glibc.items():
        print(f"{a.family} {a.size} {name}: {s:.3f} s", flush=True)
    setup = {n: partial(set_cpu_heap, "retain" if n.endswith("+retain") else "system") for n in fns}
    secs = interleaved(fns, steps=a.steps, warmup=1, device=dev, setup=setup)
    for name, fn in fns.items():
        setup[name]()
        n, sys_s = faults(fn)
        print(f"{a.family} {a.size} {name}: {secs[name]:.3f} s, {n} minor faults, {sys_s:.3f} s system")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

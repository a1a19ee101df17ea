"""A/B of candidate speed-ups of the seg families' train step, interleaved in one process (issue 14).

Each variant is vtk's model of :mod:`benchmarks.train_step_suite` (same weights, a deep copy) with one change
applied, timed with the suite's step (autocast forward + fp32 cross-entropy + backward + AdamW) in ABBA rounds
together with the reference, so the ratios hold on a loaded machine. ``main`` undoes this branch's changes (the
baseline), ``vtk`` is the model as built now, the others add an experiment on top.

Usage::

    OMP_NUM_THREADS=1 nice python -m benchmarks.seg_parts --family unetr --size full --variants main,vtk,cl,ref
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from benchmarks._common import interleaved  # noqa: E402
from benchmarks.train_step_suite import build_case, build_models, make_step  # noqa: E402

Fwd = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _undo_view_free(m: nn.Module) -> nn.Module:
    from medvit.nets import _common

    back = {v: k for k, v in _common._VIEW_FREE.items()}
    for sub in m.modules():
        if type(sub) in back:
            sub.__class__ = back[type(sub)]
    return m


def _channels_last(m: nn.Module) -> Tuple[nn.Module, Fwd]:
    m = m.to(memory_format=torch.channels_last_3d)
    return m, lambda mm, x: mm(x.contiguous(memory_format=torch.channels_last_3d))


def _variant(name: str, vtk: nn.Module) -> Tuple[nn.Module, Optional[Fwd]]:
    """A deep copy of ``vtk`` with the change ``name``, and how to call it (``None``: ``m(x)``)."""
    m = copy.deepcopy(vtk)
    if name == "vtk":
        return m, None
    if name == "main":
        return _undo_view_free(m), None
    if name == "cl":
        return _channels_last(m)
    if name == "main_cl":
        return _channels_last(_undo_view_free(m))
    raise ValueError(f"unknown variant {name!r}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="unetr")
    p.add_argument("--size", default="full")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--variants", default="main,vtk,ref", help="comma-separated: main, vtk, cl, main_cl, ref")
    p.add_argument("--optimizer", default="plain", help="vtk variants' optimizer: plain, engine")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--check", action="store_true", help="print each variant's max |logit - vtk's| in fp32")
    a = p.parse_args(argv)
    dev = torch.device("cpu")
    case = build_case(a.family, a.size)
    vtk, ref = build_models(case, dev)
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    fns: Dict[str, Callable[[], None]] = {}
    for n in names:
        if n == "ref":
            fns[n] = make_step(ref, case, a.precision, dev, case.ref_fwd)
            continue
        m, fwd = _variant(n, vtk)
        if a.check:
            x = torch.randn(case.shape)
            with torch.no_grad():
                d = ((fwd or (lambda mm, xx: mm(xx)))(m, x) - vtk(x)).abs().max().item()
            print(f"{n}: max |logit diff| fp32 {d:.3g}")
        fns[n] = make_step(m, case, a.precision, dev, fwd, optimizer=a.optimizer)
    t = interleaved(fns, a.steps, a.warmup, dev)
    base = t.get("ref", t[names[0]])
    print(f"{a.family} {a.size} {a.precision} threads {torch.get_num_threads()}: " +
          ", ".join(f"{n} {s:.3f}s ({base / s:.2f}x)" for n, s in t.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

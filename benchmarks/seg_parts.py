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
import contextlib
import copy
from unittest import mock
import sys
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from benchmarks._common import interleaved  # noqa: E402
from benchmarks.train_step_suite import build_case, build_models, make_step  # noqa: E402

def _undo_view_free(m: nn.Module) -> nn.Module:
    from medvit.nets import _common

    back = {v: k for k, v in _common._VIEW_FREE.items()}
    for sub in m.modules():
        if type(sub) in back:
            sub.__class__ = back[type(sub)]
    return m


@contextlib.contextmanager
def _no_cl() -> Iterator[None]:
    """UNETR's and Swin-UNETR's decoders in NCDHW under autocast too (``decoder_channels_last`` always false)."""
    import medvit.nets.swin_unetr as swin_unetr
    import medvit.nets.unetr as unetr

    with mock.patch.object(unetr, "decoder_channels_last", lambda x: False), \
            mock.patch.object(swin_unetr, "decoder_channels_last", lambda x: False):
        yield


def _noncontig_out() -> ContextManager[None]:
    """UNETR returning the head's output as it comes (channels-last under CPU autocast)."""
    from medvit.nets.unetr import UNETR

    return mock.patch.object(UNETR, "forward", lambda self, x: self.forward_head(self.forward_features(x)))


# name -> (model transform, context the step runs in)
VARIANTS: Dict[str, Tuple[Callable[[nn.Module], nn.Module], Callable[[], ContextManager[None]]]] = {
    "vtk": (lambda m: m, contextlib.nullcontext),
    "main": (_undo_view_free, _no_cl),
    "view_free": (lambda m: m, _no_cl),
    "cl_only": (_undo_view_free, contextlib.nullcontext),
    "cl_noncontig": (lambda m: m, _noncontig_out),
}


def _wrap(step: Callable[[], None], ctx: Callable[[], ContextManager[None]]) -> Callable[[], None]:
    def run() -> None:
        with ctx():
            step()
    return run


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="unetr")
    p.add_argument("--size", default="full")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--variants", default="main,vtk,ref", help="comma-separated: ref and keys of VARIANTS")
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
        if n not in VARIANTS:
            p.error(f"unknown variant {n!r}: one of ref, {', '.join(VARIANTS)}")
        transform, ctx = VARIANTS[n]
        m = transform(copy.deepcopy(vtk))
        if a.check:
            x = torch.randn(case.shape)
            with torch.no_grad(), ctx():
                d = (m(x) - vtk(x)).abs().max().item()
            print(f"{n}: max |logit diff| vs vtk in fp32 {d:.3g}")
        fns[n] = _wrap(make_step(m, case, a.precision, dev, optimizer=a.optimizer), ctx)
    t = interleaved(fns, a.steps, a.warmup, dev)
    base = t.get("ref", t[names[0]])
    print(f"{a.family} {a.size} {a.precision} threads {torch.get_num_threads()}: " +
          ", ".join(f"{n} {s:.3f}s ({base / s:.2f}x)" for n, s in t.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

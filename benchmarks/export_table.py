"""Export every registry model to ONNX and TorchScript and tabulate parity and onnxruntime-CPU speed vs PyTorch.

For each model: build it (``--size tiny``: the registry's tiny overrides, the configs of tests/test_export.py;
``--size full``: the registry defaults), move its weights off their init, export both formats with
:func:`backbones.export.export_model` (dynamic batch, traced with a batch of 1), load them back with
:func:`backbones.export.load_exported` and compare with PyTorch on a fresh batch of 2 (``max diff``). Then time
one forward of a batch of ``--batch`` for PyTorch eager, onnxruntime (CPU execution provider) and TorchScript,
interleaved (ABBA order) after warm-up, and report the fastest pass of each (``--stat min``, the default: on a
shared machine other jobs only ever add time) or the median; ``ORT speed`` is PyTorch time / onnxruntime time
(> 1: onnxruntime is faster). Both runtimes use ``--threads`` intra-op threads.

Usage::

    python benchmarks/export_table.py                              # every model, tiny configs, 1 thread
    python benchmarks/export_table.py --size full --models 'vit_*' --threads 2 --steps 5
    python benchmarks/export_table.py --out table.md               # also write the markdown table
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

__all__ = ["main", "measure", "format_table"]

_HEADER = ["model", "input", "ONNX", "TorchScript", "max diff ONNX", "max diff TS", "PyTorch ms", "ORT ms",
           "TS ms", "ORT speed vs PyTorch", "dynamic spatial"]


def _perturb_(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Move every parameter off its init (zero-initialised heads would make every output equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def _time_ms(fns: Dict[str, Callable[[], object]], steps: int, warmup: int, stat: str = "min") -> Dict[str, float]:
    """Fastest (``stat="min"``) or median wall time (ms) of each callable, interleaved ABBA after ``warmup``."""
    from benchmarks._common import interleaved

    return {n: t * 1e3 for n, t in interleaved(fns, steps, warmup, torch.device("cpu"), stat).items()}


def _export_one(model, meta, fmt: str, folder: Path) -> Dict[str, object]:
    from backbones.export import example_input, export_model, load_exported
    from engine.errors import VtkError

    try:
        report = export_model(model, folder / f"{meta['model']}.{fmt}", fmt, meta)
    except VtkError as e:
        return {"status": f"fails: {e}", "runner": None, "diff": None, "spatial": None}
    runner, _ = load_exported(report.path)
    x = example_input(meta["input_size"], batch=2, seed=7)
    with torch.no_grad():
        diff = float((runner(x) - model(x)).abs().max())
    return {"status": "ok", "runner": runner, "diff": diff, "spatial": report.dynamic_spatial}


def measure(reg, name: str, size: str, batch: int, steps: int, warmup: int, folder: Path,
            stat: str = "min") -> Dict[str, object]:
    """One table row: export both formats, parity on a batch of 2, forward times at ``batch`` (``stat``)."""
    from backbones.export import example_input, prepare_export

    torch.manual_seed(0)
    model, meta = prepare_export(reg, name, model_args=reg.tiny_overrides(name) if size == "tiny" else {})
    _perturb_(model)
    row: Dict[str, object] = {"model": name, "input": "x".join(map(str, meta["input_size"]))}
    results = {fmt: _export_one(model, meta, fmt, folder) for fmt in ("onnx", "torchscript")}
    x = example_input(meta["input_size"], batch=batch, seed=3)
    fns: Dict[str, Callable[[], object]] = {"torch": lambda: _no_grad(model, x)}
    fns.update({fmt: (lambda r=r: r["runner"](x)) for fmt, r in results.items() if r["runner"] is not None})
    ms = _time_ms(fns, steps, warmup, stat)
    onnx, ts = results["onnx"], results["torchscript"]
    row.update({"ONNX": onnx["status"], "TorchScript": ts["status"], "max diff ONNX": onnx["diff"],
                "max diff TS": ts["diff"], "PyTorch ms": ms["torch"], "ORT ms": ms.get("onnx"),
                "TS ms": ms.get("torchscript"),
                "ORT speed vs PyTorch": ms["torch"] / ms["onnx"] if "onnx" in ms else None,
                "dynamic spatial": onnx["spatial"] if onnx["spatial"] is not None else ts["spatial"]})
    for fmt in results:
        (folder / f"{name}.{fmt}").unlink(missing_ok=True)
    return row


def _no_grad(model, x):
    with torch.no_grad():
        return model(x)


def _cell(key: str, value: object) -> str:
    if value is None:
        return "-"
    if key.startswith("max diff"):
        return f"{value:.1e}"
    if key.endswith(" ms"):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if key == "ORT speed vs PyTorch":
        return f"{value:.2f}x"
    if key == "dynamic spatial":
        return "yes" if value else "no"
    return str(value)


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    """The rows as a GitHub markdown table."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k in _HEADER) + " |" for r in rows]
    return "\n".join(lines)


def _names(pattern: str) -> List[tuple]:
    out = []
    for pkg in ("backbones", "medvit", "videovit"):
        reg = importlib.import_module(pkg).registry
        out += [(reg, n) for n in reg.list_models() if any(fnmatch.fnmatch(n, p) for p in pattern.split(","))
                and reg.entrypoint(n).__module__.startswith(pkg + ".")]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=["tiny", "full"], help="tiny overrides or registry defaults")
    p.add_argument("--models", default="*", help="shell-style name filters, comma-separated, e.g. 'vit_*,unetr'")
    p.add_argument("--batch", type=int, default=1, help="batch of the timed forward passes")
    p.add_argument("--steps", type=int, default=20, help="timed forward passes per runtime")
    p.add_argument("--warmup", type=int, default=3, help="untimed forward passes per runtime first")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of PyTorch and onnxruntime")
    p.add_argument("--stat", default="min", choices=["min", "median"], help="fastest or median timed pass")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    a = p.parse_args(argv)
    if min(a.batch, a.steps, a.threads) < 1 or a.warmup < 0:
        p.error(f"--batch {a.batch}, --steps {a.steps} and --threads {a.threads} must be >= 1, --warmup >= 0")
    models = _names(a.models)
    if not models:
        p.error(f"no model matches {a.models!r}")
    from engine.io import atomic_write_text

    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vtk-export-") as tmp:
        for reg, name in models:
            start = time.perf_counter()
            rows.append(measure(reg, name, a.size, a.batch, a.steps, a.warmup, Path(tmp), a.stat))
            print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
            if a.out is not None:  # the rows so far: a run killed midway (out of memory) keeps them
                atomic_write_text(a.out, format_table(rows) + "\n")
    table = format_table(rows)
    from backbones.export import _version

    print(f"torch {torch.__version__}, onnxruntime {_version('onnxruntime')}, {a.size} configs, batch {a.batch}, "
          f"{a.threads} thread(s), {a.stat} of {a.steps} forward passes\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU suite: every family's bf16 train step against its reference, the SDPA kernel of every attention, and
sliding-window inference of a 512 x 512 x 300 CT, with tokens/s and MFU, as one JSON file. Under 8 minutes on one
GPU; needs only torch and vtk (timm, MONAI, transformers, pytorchvideo are optional: a missing one skips its
reference and the JSON says so).

Per family (the ``full`` sizes of :mod:`benchmarks.train_step_suite`): median seconds of a bf16 train step of vtk
and of the reference, interleaved; tokens/s; GFLOP per step; MFU against the device's measured bf16 matrix rate;
peak memory (``torch.cuda.max_memory_allocated`` above the model, optimizer and batch). Then every distinct
``scaled_dot_product_attention`` call of vtk's forward (shape, mask, dtype) is probed with
``torch.nn.attention.sdpa_kernel`` restricted to one backend at a time (flash, memory-efficient, cuDNN, math):
the first that runs is the kernel that call gets. A call that only the math kernel runs is listed under
``math_fallbacks`` (a bug to fix: the fused kernels are what makes attention fast and small).

``--dry-run`` runs all of it on the CPU at the ``tiny`` sizes and a 64 x 64 x 40 CT (seconds to minutes), which is
what CI runs (tests/test_gpu_suite.py) so the script is known to work before a GPU meets it.

Usage::

    python -m benchmarks.gpu_suite --out gpu_suite.json                 # on the GPU machine
    python -m benchmarks.gpu_suite --dry-run --out /tmp/dry.json        # anywhere
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from benchmarks._common import count_flops, interleaved, matrix_rate, sync  # noqa: E402
from benchmarks.train_step_suite import FAMILIES, build_case, make_step  # noqa: E402

__all__ = ["main", "run_suite", "probe_sdpa", "sliding_window_bench", "SCHEMA_VERSION", "KERNELS"]

SCHEMA_VERSION = 1
KERNELS = ("flash", "efficient", "cudnn", "math")


def _backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]


def _kernel_for(q, k, v, kwargs: Dict[str, Any]) -> str:
    """The first of :data:`KERNELS` that runs this SDPA call (forward and backward), or ``"none"``."""
    from torch.nn.attention import sdpa_kernel

    for name in KERNELS:
        try:
            with sdpa_kernel([_backend(name)]):
                qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
                F.scaled_dot_product_attention(qq, kk, vv, **kwargs).float().sum().backward()
            return name
        except RuntimeError:
            continue
    return "none"


def probe_sdpa(model: torch.nn.Module, x: torch.Tensor, fwd: Callable, device: torch.device) -> List[Dict[str, Any]]:
    """Every distinct SDPA call of one bf16 forward of ``model`` and the kernel it gets."""
    from engine.context import autocast_for

    seen: Dict[tuple, Dict[str, Any]] = {}
    original = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        mask = None if attn_mask is None else f"{str(attn_mask.dtype).replace('torch.', '')}{list(attn_mask.shape)}"
        key = (tuple(q.shape), tuple(k.shape), str(q.dtype), mask, is_causal)
        if key not in seen:
            kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)
            F.scaled_dot_product_attention = original
            try:
                kernel = _kernel_for(q, k, v, kwargs)
            finally:
                F.scaled_dot_product_attention = recording
            seen[key] = dict(q=list(q.shape), k=list(k.shape), dtype=str(q.dtype).replace("torch.", ""),
                             mask=mask, causal=is_causal, kernel=kernel, calls=0)
        seen[key]["calls"] += 1
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    F.scaled_dot_product_attention = recording
    try:
        with torch.no_grad(), autocast_for("bf16", device):
            fwd(model, x)
    finally:
        F.scaled_dot_product_attention = original
    return list(seen.values())


def _family(family: str, size: str, device: torch.device, steps: int, warmup: int, rate: float) -> Dict[str, Any]:
    case = build_case(family, size)
    row: Dict[str, Any] = dict(family=family, config=case.config, reference=case.reference or "none",
                               reference_missing=None, error=None)
    torch.manual_seed(0)
    ref = None
    if case.build_ref is not None:
        try:
            ref = case.build_ref()
        except ImportError as e:  # an optional reference library is not installed
            row["reference_missing"] = f"{getattr(e, 'name', None) or e} is not installed"
    try:
        vtk = case.build_vtk(ref.state_dict() if ref is not None else None)
    except Exception:  # noqa: BLE001 - no converter for this reference: same architecture, own init
        vtk = case.build_vtk(None)
    vtk = vtk.to(device).train()
    ref = ref.to(device).train() if ref is not None else None
    fns = {"vtk": make_step(vtk, case, "bf16", device)}
    if ref is not None:
        fns["ref"] = make_step(ref, case, "bf16", device, case.ref_fwd)
    flops = {k: count_flops(make_step(m, case, "bf16", device, case.ref_fwd if k == "ref" else None))
             for k, m in (("vtk", vtk), ("ref", ref)) if m is not None}
    times = interleaved(fns, steps, warmup, device)
    row.update(seconds=times, flops=flops, tokens=case.tokens,
               tokens_per_s={k: case.tokens / t for k, t in times.items()},
               mfu={k: flops[k] / t / rate for k, t in times.items()},
               speedup=(times["ref"] / times["vtk"]) if "ref" in times else None,
               peak_mem_mib={k: _peak_memory(fn, device) for k, fn in fns.items()})
    x = torch.randn(case.shape, device=device)
    calls = probe_sdpa(vtk, x, lambda m, t: m(t), device)
    row["sdpa"] = calls
    row["math_fallbacks"] = [c for c in calls if c["kernel"] in ("math", "none")]
    return row


def _peak_memory(step: Callable[[], None], device: torch.device) -> Optional[float]:
    """MiB allocated by one step above what was allocated before it (CUDA; ``None`` on CPU, where
    :mod:`benchmarks.train_step_suite` measures RSS in subprocesses instead)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def sliding_window_bench(shape: Sequence[int], size: str, device: torch.device, rounds: int,
                         rate: float, overlap: float = 0.25) -> Dict[str, Any]:
    """bf16 sliding-window inference of a UNETR over a ``(1, 1, *shape)`` CT tensor: vtk's
    :func:`medvit.inference.sliding_window_probs` (under ``engine.context.autocast_for``) against MONAI's
    ``sliding_window_inference`` of MONAI's UNETR (fp32, its default, when MONAI is installed)."""
    import medvit
    from engine.context import autocast_for
    from medvit.inference import sliding_window_probs

    cfg = dict(tiny=dict(img=32, f=4, dim=64, heads=2), full=dict(img=96, f=16, dim=768, heads=12))[size]
    roi = (cfg["img"],) * 3
    torch.manual_seed(0)
    vtk = medvit.create_model("unetr", img_size=roi, feature_size=cfg["f"], embed_dim=cfg["dim"],
                              num_heads=cfg["heads"], num_classes=14).to(device).eval()
    x = torch.rand(1, 1, *shape, device=device)
    out: Dict[str, Any] = dict(shape=list(shape), roi=list(roi), overlap=overlap, reference_missing=None)

    def ours() -> None:
        with autocast_for("bf16", device):
            sliding_window_probs(vtk, x, roi, sw_batch_size=4, overlap=overlap)

    fns = {"vtk_bf16": ours}
    try:
        from monai.inferers import sliding_window_inference
        from monai.networks.nets import UNETR

        torch.manual_seed(0)
        ref = UNETR(in_channels=1, out_channels=14, img_size=roi, feature_size=cfg["f"], hidden_size=cfg["dim"],
                    mlp_dim=4 * cfg["dim"], num_heads=cfg["heads"], proj_type="perceptron").to(device).eval()

        def monai_fp32() -> None:
            with torch.no_grad():
                torch.softmax(sliding_window_inference(x, roi, 4, ref, overlap=overlap, mode="gaussian"), 1)

        fns["monai_fp32"] = monai_fp32
    except ImportError as e:
        out["reference_missing"] = f"{getattr(e, 'name', None) or e} is not installed"
    window_flops = count_flops(lambda: vtk(torch.randn(1, 1, *roi, device=device)))
    n_windows = _windows(shape, roi, overlap)
    secs = interleaved(fns, rounds, 1, device)
    out.update(seconds=secs, windows=n_windows, gflop_per_window=window_flops / 1e9,
               mfu_vtk=window_flops * n_windows / secs["vtk_bf16"] / rate,
               voxels_per_s={k: float(torch.tensor(shape).prod()) / t for k, t in secs.items()},
               speedup=(secs["monai_fp32"] / secs["vtk_bf16"]) if "monai_fp32" in secs else None)
    return out


def _windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Sliding windows MONAI places over ``shape`` (``ceil((n - r) / stride) + 1`` per axis)."""
    import math

    n = 1
    for s, r in zip(shape, roi):
        stride = max(int(r * (1 - overlap)), 1)
        n *= 1 if s <= r else math.ceil((s - r) / stride) + 1
    return n


def run_suite(dry_run: bool, families: Sequence[str], steps: int, warmup: int, budget_s: float,
              device: Optional[str] = None) -> Dict[str, Any]:
    """Run the suite and return its JSON-able result (see the module docstring)."""
    t0 = time.perf_counter()
    dev = torch.device(device or ("cpu" if dry_run or not torch.cuda.is_available() else "cuda"))
    size = "tiny" if dry_run else "full"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rate = matrix_rate(torch.bfloat16, dev, n=512 if dry_run else 8192, reps=3 if dry_run else 10)
    res: Dict[str, Any] = dict(
        suite="vtk-gpu-suite", schema_version=SCHEMA_VERSION, dry_run=dry_run, size=size,
        device=dict(type=dev.type, name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
                    or platform.machine(), torch=torch.__version__,
                    cuda=torch.version.cuda if dev.type == "cuda" else None),
        bf16_matrix_tflops=rate / 1e12, families=[], skipped=[], sliding_window=None)
    for fam in families:
        if time.perf_counter() - t0 > budget_s:
            res["skipped"].append(dict(family=fam, why=f"time budget {budget_s:.0f} s spent"))
            continue
        try:
            res["families"].append(_family(fam, size, dev, steps, warmup, rate))
        except Exception as e:  # noqa: BLE001 - one family's failure is reported, the others still run
            res["families"].append(dict(family=fam, error=f"{type(e).__name__}: {e}"))
        print(json.dumps({k: v for k, v in res["families"][-1].items() if k != "sdpa"}), flush=True)
    shape = (40, 64, 64) if dry_run else (300, 512, 512)
    try:
        res["sliding_window"] = sliding_window_bench(shape, size, dev, 1 if dry_run else 3, rate)
    except Exception as e:  # noqa: BLE001
        res["sliding_window"] = dict(error=f"{type(e).__name__}: {e}")
    res["math_fallbacks"] = [dict(family=f["family"], **c) for f in res["families"] for c in f.get("math_fallbacks", [])]
    res["elapsed_s"] = time.perf_counter() - t0
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, measures nothing real")
    p.add_argument("--family", default="all", help=f"comma-separated: {', '.join(FAMILIES)} (default all)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default 5 on GPU, 1 dry)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2 on GPU, 0 dry)")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip the families left after this many seconds")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=Path("gpu_suite.json"), help="the JSON result (written atomically)")
    a = p.parse_args(argv)
    families = list(FAMILIES) if a.family == "all" else [f.strip() for f in a.family.split(",") if f.strip()]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        p.error(f"--family: {bad or a.family!r} not in {', '.join(FAMILIES)}")
    steps = a.steps if a.steps is not None else (1 if a.dry_run else 5)
    warmup = a.warmup if a.warmup is not None else (0 if a.dry_run else 2)
    res = run_suite(a.dry_run, families, steps, warmup, a.budget_s, a.device)
    from engine.io import atomic_write_json

    atomic_write_json(a.out, res)
    bad_calls = len(res["math_fallbacks"])
    print(f"wrote {a.out}: {len(res['families'])} families in {res['elapsed_s']:.0f} s, "
          f"{bad_calls} SDPA call(s) on the math kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main())

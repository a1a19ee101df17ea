"""How the C heap treats the memory a CPU train step frees: kept for the next step, or given back to the kernel.

PyTorch's CPU tensors come from plain ``malloc``. glibc serves every block over its mmap threshold (128 KiB at
first) with a fresh ``mmap`` and unmaps it on ``free``, so each train step faults its activations, casts and
gradients in again, one zeroed page at a time: 70-100k minor faults and about 0.2 s of system time per ViT-B/16 b4
step. ``retain`` raises the mmap and trim thresholds (``mallopt``) so freed blocks stay in the heap and the next
step reuses them, as PyTorch's CUDA caching allocator does on GPUs (measured with 2 threads, ViT-B/16 224^2 b4,
bf16: 1.04 -> 0.91 s per step, ``python -m benchmarks.allocator_ab``). The process then keeps its peak resident set
between steps instead of returning to the kernel what a step frees; the peak itself stays that of the step.
Inference faults its activations in the same way for every batch of windows or clips: the seg and video
prediction and evaluation jobs apply ``retain`` too (:func:`set_cpu_heap_on`).

Only glibc has these knobs; elsewhere (musl, macOS, Windows) :func:`set_cpu_heap` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Optional

__all__ = ["CPU_HEAP_POLICIES", "set_cpu_heap", "set_cpu_heap_on", "glibc"]

CPU_HEAP_POLICIES = ("retain", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_RETAIN_MMAP = 2 ** 30  # blocks below 1 GiB come from the heap
_RETAIN_TRIM = 2 ** 31 - 1  # never give the top of the heap back on free
_DEFAULT = 128 * 1024  # glibc's initial mmap and trim thresholds


@functools.lru_cache(maxsize=None)
def glibc() -> Optional[ctypes.CDLL]:
    """This process's C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else ``None``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return None
    return libc


def _check_policy(policy: str) -> None:
    if policy not in CPU_HEAP_POLICIES:
        raise ValueError(f"cpu_heap must be one of {', '.join(CPU_HEAP_POLICIES)}, got {policy!r}")


def set_cpu_heap(policy: str) -> bool:
    """Apply a heap policy to this process (and the workers it forks afterwards).

    Args:
        policy: ``retain`` (keep freed blocks for reuse: fewer page faults per step) or ``system`` (glibc's
            initial thresholds, without its dynamic raising of the mmap threshold once set, and what the heap holds
            free given back now).

    Returns:
        Whether the policy took effect (``False`` without glibc).

    Raises:
        ValueError: An unknown policy.
    """
    _check_policy(policy)
    libc = glibc()
    if libc is None:
        return False
    if policy == "retain":
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _RETAIN_MMAP) and libc.mallopt(_M_TRIM_THRESHOLD, _RETAIN_TRIM)
    else:
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT) and libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT)
        libc.malloc_trim(0)
    return bool(ok)


def set_cpu_heap_on(device, policy: str = "retain") -> bool:
    """:func:`set_cpu_heap` for a job that runs its model on ``device``: applied on the CPU only.

    The prediction and evaluation jobs (``medvit.inference.predict_files``, ``medvit.evaluate.evaluate_checkpoint``,
    ``videovit.inference.Predictor.evaluate`` / ``predict_all``) call it, since each batch of sliding windows or
    clips faults its activations in again as a train step does (AMD EPYC, 2 threads, bf16: ``vtk seg predict`` of
    a 512x512x100 CT with the full UNETR 26.4 -> 18.6 s, peak RSS 3.43 -> 3.54 GiB; an MViT-B 16x224^2 forward of
    2 clips 1.05 -> 0.87 s).

    Args:
        device: The job's device (a ``torch.device`` or its name).
        policy: As :func:`set_cpu_heap`.

    Returns:
        Whether the policy took effect (``False`` off the CPU or without glibc).
    """
    _check_policy(policy)  # on every device
    return str(device).split(":")[0] == "cpu" and set_cpu_heap(policy)

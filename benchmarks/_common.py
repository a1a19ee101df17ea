"""Shared helpers of the train-step, seg-predict and GPU suites: timing, FLOP counting, matrix rate, peak memory.

Peak memory of a train step is not something ``tracemalloc`` sees (torch allocates outside Python's allocator), so
it is measured as the growth of the resident set in a fresh subprocess: the RSS once the model, optimizer and batch
exist, against the process's peak RSS (``ru_maxrss``) after two train steps. On CUDA,
``torch.cuda.max_memory_allocated`` gives the same quantity directly.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["sync", "timed", "interleaved", "count_flops", "matrix_rate", "rss_mib", "peak_rss_mib", "reset_peak_rss",
           "run_json_subprocess"]


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA kernels are asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleaved(fns: Dict[str, Callable[[], object]], steps: int, warmup: int,
                device: torch.device, stat: str = "median") -> Dict[str, float]:
    """Median (or ``stat="min"``: fastest) seconds per call of each of ``fns``, run in turn (ABBA: the order
    flips every round) after ``warmup`` untimed calls each, so load changes on a shared machine hit every function
    alike."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for i in range(steps):
        for n in (names if i % 2 == 0 else names[::-1]):
            times[n].append(timed(fns[n], device))
    reduce = min if stat == "min" else statistics.median
    return {n: reduce(t) for n, t in times.items()}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matrix multiplies, convolutions and attention one call of ``fn`` runs
    (``torch.utils.flop_counter``: forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matrix_rate(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Measured FLOP/s of an ``n x n`` by ``n x n`` matrix multiply in ``dtype`` on ``device`` (median of ``reps``):
    the denominator of MFU, the rate this device reaches on the simplest large matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    t = statistics.median(timed(lambda: a @ b, device) for _ in range(reps))
    return 2.0 * n ** 3 / t


def rss_mib() -> float:
    """This process's resident set now (MiB)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (``VmHWM``) to its current one (Linux >= 4.0: ``5`` to
    ``/proc/self/clear_refs``); ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """This process's peak resident set (MiB): ``VmHWM`` of ``/proc/self/status``, which belongs to this process's
    own address space (and :func:`reset_peak_rss` resets). Not ``ru_maxrss``: Linux carries that over ``fork`` and
    ``exec``, so a subprocess started by a large benchmark process reports the parent's size as its own peak
    (every "peak" of the suite's first memory columns was the parent's RSS). ``ru_maxrss`` only where there is no
    ``/proc``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_json_subprocess(module: str, args: Sequence[str], timeout: float = 1800) -> Optional[dict]:
    """Run ``python -m module *args`` in a fresh interpreter and parse the JSON of its last stdout line (``None``
    when it fails: the caller reports the measurement as missing rather than stopping the suite)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([p for p in sys.path if p]))
    try:
        r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                           env=env)
    except subprocess.TimeoutExpired:
        return None
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode != 0 or not lines:
        sys.stderr.write(r.stderr[-2000:])
        return None
    return json.loads(lines[-1])

"""Shared helpers of the benchmarks: timing (interleaved rounds and their ratios), FLOP counting, matrix rate, peak
memory, and vtk commands run in a fresh interpreter.

Peak memory of a train step is not something ``tracemalloc`` sees (torch allocates outside Python's allocator).
On CUDA ``torch.cuda.max_memory_allocated`` gives it: the peak of the bytes live in tensors. On the CPU
:class:`TensorPeak` counts the same quantity (every storage an op creates, until its last tensor dies), which is
deterministic; the growth of the resident set in a fresh subprocess (:func:`peak_rss_mib`) is reported beside it,
but it moves by +-50 MiB between identical runs of a 1.2 GiB ViT-B step with how glibc happens to place and return
blocks, so it cannot rank two models within a few percent.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose cli.main run_vtk runs

__all__ = ["sync", "timed", "interleaved", "interleaved_samples", "round_ratios", "count_flops", "matrix_rate",
           "matrix_product", "rss_mib", "peak_rss_mib", "reset_peak_rss", "run_json_subprocess", "run_vtk",
           "last_step", "TensorPeak"]


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
                device: torch.device, stat: str = "median",
                setup: Optional[Dict[str, Callable[[], object]]] = None) -> Dict[str, float]:
    """Median (or ``stat="min"``: fastest) seconds per call of each of ``fns`` over
    :func:`interleaved_samples`."""
    reduce = min if stat == "min" else statistics.median
    return {n: reduce(t) for n, t in interleaved_samples(fns, steps, warmup, device, setup).items()}


def interleaved_samples(fns: Dict[str, Callable[[], object]], steps: int, warmup: int, device: torch.device,
                        setup: Optional[Dict[str, Callable[[], object]]] = None,
                        on_round: Optional[Callable[[], object]] = None) -> Dict[str, List[float]]:
    """Seconds of each of ``steps`` calls of each of ``fns``, run in turn (ABBA: the order flips every round)
    after ``warmup`` untimed calls each, so load changes on a shared machine hit every function alike; the
    ``i``-th entries of two functions come from the same round (see :func:`round_ratios`). ``setup[name]``, where
    given, runs untimed before each call of ``fns[name]`` (a process-wide setting such as the C heap policy,
    switched per function); ``on_round``, after each of the ``warmup + steps`` rounds (a progress bar)."""
    names = list(fns)
    setup = setup or {}

    def call(n: str, timer: bool) -> Optional[float]:
        if n in setup:
            setup[n]()
        if timer:
            return timed(fns[n], device)
        fns[n]()
        return None

    tick = on_round or (lambda: None)
    for _ in range(warmup):
        for n in names:
            call(n, False)
        tick()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for i in range(steps):
        for n in (names if i % 2 == 0 else names[::-1]):
            times[n].append(call(n, True))
        tick()
    return times


def round_ratios(num: Sequence[float], den: Sequence[float]) -> Dict[str, float]:
    """Spread of a speed-up over the rounds of :func:`interleaved_samples`: ``num[i] / den[i]`` per round (two
    calls timed side by side, so a slow stretch of a shared machine mostly cancels), as its ``median``, ``lo``
    and ``hi`` (the quartiles from 4 rounds on, else the extremes) and the number of ``rounds``.

    Raises:
        ValueError: The two lists differ in length or are empty.
    """
    if len(num) != len(den) or not num:
        raise ValueError(f"need the same number (>= 1) of rounds, got {len(num)} and {len(den)}")
    r = sorted(a / b for a, b in zip(num, den))
    lo, hi = (r[0], r[-1]) if len(r) < 4 else statistics.quantiles(r, n=4, method="inclusive")[::2]
    return {"median": statistics.median(r), "lo": lo, "hi": hi, "rounds": len(r)}


def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter():
    """``FlopCounterMode`` that also counts PyTorch's CPU flash attention (``torch.utils.flop_counter`` knows only
    the CUDA kernels, so an SDPA call on the CPU counted nothing), with the same formulas as its CUDA ones."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops})


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matrix multiplies, convolutions and attention one call of ``fn`` runs
    (:func:`flop_counter`: forward and backward)."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def matrix_rate(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5,
                budget_s: float = 0.5) -> float:
    """Measured FLOP/s of an ``n x n`` by ``n x n`` matrix multiply in ``dtype`` on ``device`` (median of ``reps``):
    the denominator of MFU, the rate this device reaches on the simplest large matmul.

    On a CPU, where a 256^3 product says one ``n``-product would take over ``budget_s`` (a dtype the CPU only
    emulates, such as bf16 on AVX2: about 1 GFLOP/s, so 17 s per 2048^3 product), ``n`` halves until it fits: such a
    rate is far from any peak anyway, and the measurement stays seconds long."""
    product, flop = matrix_product(dtype, device, n, budget_s)
    for _ in range(2):
        product()
    t = statistics.median(timed(product, device) for _ in range(reps))
    return flop / t


def matrix_product(dtype: torch.dtype, device: torch.device, n: int = 2048,
                   budget_s: float = 0.5) -> Tuple[Callable[[], object], float]:
    """The product :func:`matrix_rate` times (``n x n`` by ``n x n``, ``n`` from :func:`matrix_size`) as a
    function, with its FLOPs."""
    n = matrix_size(dtype, device, n, budget_s)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2.0 * n ** 3


def matrix_size(dtype: torch.dtype, device: torch.device, n: int, budget_s: float, probe: int = 256) -> int:
    """The edge :func:`matrix_rate` uses: ``n`` off a CPU; on it, the largest ``n / 2^k >= probe`` whose product
    takes under ``budget_s`` at the rate of a ``probe`` one."""
    if device.type != "cpu":
        return n
    x = torch.randn(probe, probe, dtype=dtype)
    x @ x
    rate = 2.0 * probe ** 3 / max(timed(lambda: x @ x, torch.device("cpu")), 1e-9)
    while n > probe and 2.0 * n ** 3 / rate > budget_s:
        n //= 2
    return n


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


def _storage_key(t: object) -> int:
    """The data pointer of a dense tensor's storage (0 for anything else)."""
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.is_meta:
        return 0
    return t.untyped_storage().data_ptr()


class TensorPeak(TorchDispatchMode):
    """Peak bytes live in the tensors that the ops run inside it create: ``max_memory_allocated`` for the CPU.

    Every storage an op returns that none of its inputs had is counted from then until the last tensor on it dies
    (views and in-place results share their input's count; parameters and tensors made before the mode are not
    counted). Kernels' internal scratch (a oneDNN workspace) is not seen, as the CUDA figure does not see cuBLAS's.

    Example::

        >>> with TensorPeak() as m:
        ...     y = torch.ones(2 ** 18).mul(2)   # two 1 MiB tensors, the first freed at once
        >>> round(m.peak / 2 ** 20)
        2
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: Dict[int, List[int]] = {}  # storage pointer -> [tensors on it, bytes]
        self.current = 0
        self.peak = 0

    def _drop(self, key: int) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self.live[key]
            self.current -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(a) for a in tree_flatten((args, kwargs))[0]}
        for t in tree_flatten(out)[0]:
            key = _storage_key(t)
            if key == 0 or (key in inputs and key not in self.live):
                continue  # not a dense tensor, or a view / in-place result of an uncounted tensor
            if key in self.live:
                self.live[key][0] += 1
            else:
                nbytes = t.untyped_storage().nbytes()
                self.live[key] = [1, nbytes]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._drop, key)
        return out


def subprocess_env() -> Dict[str, str]:
    """The environment of a ``python -m benchmarks...`` child: this one, with this process's ``sys.path`` as the
    child's ``PYTHONPATH`` (so a source checkout imports the same modules)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([p for p in sys.path if p]))


def run_json_subprocess(module: str, args: Sequence[str], timeout: float = 1800) -> Optional[dict]:
    """Run ``python -m module *args`` in a fresh interpreter and parse the JSON of its last stdout line (``None``
    when it fails: the caller reports the measurement as missing rather than stopping the suite)."""
    try:
        r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                           env=subprocess_env())
    except subprocess.TimeoutExpired:
        return None
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode != 0 or not lines:
        sys.stderr.write(r.stderr[-2000:])
        return None
    return json.loads(lines[-1])


Progress = Tuple[str, int, str, Callable[[], int]]  # (description, total, unit, units done so far)


def run_vtk(args: Sequence[str], log: Path, progress: Optional[Progress] = None) -> float:
    """Run ``vtk *args`` (``python -m cli.main``, this checkout first on the path) in a fresh interpreter, its
    output appended to ``log``; its wall time in seconds.

    With ``progress``, its count is polled every 2 s while the command runs and shown with an ETA on stderr
    (:class:`engine.progress.ItemProgress`): the child's own progress goes to the log.

    Raises:
        RuntimeError: The command failed (the log's path and its last lines in the message).
    """
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write("$ vtk " + " ".join(args) + "\n")
        fh.flush()
        env = subprocess_env()
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env["PYTHONPATH"]])
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdout=fh, stderr=subprocess.STDOUT,
                                env=env)
        _watch(proc, progress)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-5:]
        raise RuntimeError(f"vtk {' '.join(args[:2])} exited {proc.returncode}; see {log}: " + " | ".join(tail))
    return time.perf_counter() - start


def _watch(proc: subprocess.Popen, progress: Optional[Progress]) -> None:
    """Wait for ``proc``, advancing a progress bar from ``progress``'s count every 2 s."""
    if progress is None:
        proc.wait()
        return
    from engine.progress import ItemProgress

    description, total, unit, count = progress
    with ItemProgress(total, description, unit=unit) as bar:
        finished = False
        while not finished:
            try:
                proc.wait(timeout=2.0)
                finished = True
            except subprocess.TimeoutExpired:
                pass
            done = min(count(), total)
            if done > bar.done:
                bar.advance(done - bar.done)


def last_step(run: Path) -> int:
    """The highest ``step`` in ``run/metrics.jsonl`` so far: 0 before the first record; a line the run is still
    writing is skipped."""
    path = run / "metrics.jsonl"
    steps = [0]
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except ValueError:
            continue
    return max(steps)

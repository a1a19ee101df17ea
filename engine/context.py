"""The :class:`Context` a Task receives: device, ranks, autocast, sharding, reductions, logging, progress."""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, Mapping, Optional, TypeVar

import torch

from engine.distributed import DistInfo, all_gather_object, all_reduce_sum
from engine.errors import VtkWarning

__all__ = ["Context", "autocast_dtype", "resolve_precision", "cpu_has_native_bf16", "autocast_for",
           "precision_option", "INFERENCE_PRECISIONS", "cpu_has_amx", "cpu_has_native_fp16", "emulation_note",
           "PrecisionWarning", "cpu_autocast_is_native", "EMULATED_WHY"]

T = TypeVar("T")
_DTYPES = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}
INFERENCE_PRECISIONS = ("auto", "32", "bf16", "16")  # what eval/predict/bench's --precision offers


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a (normalised, resolved) precision, ``None`` for full precision."""
    return _DTYPES[precision]


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def _torch_capability_has_amx() -> bool:
    return "AMX" in str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()).upper()


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (avx512_bf16 or AMX-BF16), per ``/proc/cpuinfo`` or
    PyTorch's CPU capability."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags()) or _torch_capability_has_amx()


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX-BF16 tiles (``amx_bf16`` in ``/proc/cpuinfo``, or PyTorch's CPU capability)."""
    return "amx_bf16" in _cpu_flags() or _torch_capability_has_amx()


@functools.lru_cache(maxsize=None)
def cpu_has_native_fp16() -> bool:
    """Whether this CPU multiplies fp16 matrices natively (avx512_fp16 or AMX-FP16, per ``/proc/cpuinfo``)."""
    return bool({"avx512_fp16", "amx_fp16"} & _cpu_flags())


def cpu_autocast_is_native() -> bool:
    """Whether a CPU autocast is on and this CPU multiplies its dtype natively (oneDNN's bf16 / fp16 kernels run;
    elsewhere PyTorch's emulation does, with other layouts and far slower)."""
    if not torch.is_autocast_enabled("cpu"):
        return False
    dtype = torch.get_autocast_dtype("cpu")
    return (dtype == torch.bfloat16 and cpu_has_native_bf16()) or (dtype == torch.float16 and cpu_has_native_fp16())


#: What a CPU lacks when it only emulates a precision (``/proc/cpuinfo`` flags named in words).
EMULATED_WHY = {"bf16": "no avx512_bf16 or AMX", "16-mixed": "no avx512_fp16 or AMX-FP16"}


class PrecisionWarning(VtkWarning):
    """A precision that this device can only emulate: it runs, but many times slower than fp32."""


def emulation_note(precision: str, device: torch.device) -> Optional[str]:
    """Why a resolved ``precision`` (``32``, ``bf16``, ``16-mixed``) is slow on ``device``, or ``None``.

    On a CPU without avx512_bf16 or AMX, PyTorch multiplies bf16 matrices in a scalar fallback: on a 2-core AVX2
    EPYC about 1 GFLOP/s against fp32's 125 (docs/performance.md). fp16 needs avx512_fp16 or AMX-FP16 alike.
    """
    if device.type != "cpu":
        return None
    if precision == "bf16" and not cpu_has_native_bf16():
        return (f"--precision bf16: this CPU has no native bf16 ({EMULATED_WHY['bf16']}), so its bf16 matrix "
                "multiplies are emulated, many times slower than fp32; --precision auto uses fp32 here")
    if precision == "16-mixed" and not cpu_has_native_fp16():
        return (f"--precision 16: this CPU has no native fp16 ({EMULATED_WHY['16-mixed']}), so its fp16 matrix "
                "multiplies are emulated, many times slower than fp32; --precision auto uses fp32 here")
    return None


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA devices with bf16 and on CPUs with native bf16, else ``32``; other values
    pass through, with a :class:`PrecisionWarning` (:func:`emulation_note`) where the device can only emulate
    them. Enables TF32 matmuls on CUDA for the fp32 work that remains.

    Metrics, loss reductions, written probabilities and checkpoints stay fp32 whatever this returns: autocast only
    changes the matmul/conv inputs.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision != "auto":
        note = emulation_note(precision, device)
        if note is not None:
            warnings.warn(note, PrecisionWarning)  # one location: Python's default filter shows it once
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "32"
    return "32"


def precision_option(value: str, device: torch.device, option: str = "--precision") -> str:
    """``--precision`` of an eval/predict/bench command, normalised (``fp32``, ``16``, ``bf16-mixed``... accepted)
    and resolved for ``device``: ``32``, ``bf16`` or ``16-mixed``.

    Raises:
        UserError: A value that is no precision (one line naming ``option``).
    """
    from engine.config import normalize_precision
    from engine.errors import UserError

    try:
        canonical = normalize_precision(value)
    except UserError:
        from engine.choices import check_choice

        check_choice(option, str(value), INFERENCE_PRECISIONS)  # raises with the close-match hint
        raise
    return resolve_precision(canonical, device)


def autocast_for(precision: str, device: torch.device) -> ContextManager[Any]:
    """An autocast context for ``precision`` (``auto`` resolved for ``device``); a no-op for fp32."""
    dtype = autocast_dtype(resolve_precision(precision, device))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Context:
    """What a Task sees of the run.

    Args:
        dist: This process's rank, world size and device.
        precision: ``auto``, ``32``, ``bf16`` or ``16-mixed`` (``auto`` is resolved for the device).
        log_fn: Receives ``(step, values)``; writes metrics (rank 0).
        progress_fn: Wraps an iterable in a progress display (rank 0).
        cfg: The run's config (``ctx.cfg``), for tasks that need it at validation time.

    Attributes:
        step: The 1-based optimizer step being computed (during validation: the last finished step).
        epoch: The current epoch.
    """

    def __init__(self, dist: DistInfo, precision: str = "32",
                 log_fn: Optional[Callable[[int, Mapping[str, Any]], None]] = None,
                 progress_fn: Optional[Callable[..., Iterator[Any]]] = None, cfg: Any = None) -> None:
        self.dist = dist
        self.precision = resolve_precision(precision, dist.device)
        self.cfg = cfg
        self.step = 0
        self.epoch = 0
        self._log_fn = log_fn
        self._progress_fn = progress_fn

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def autocast(self) -> ContextManager[Any]:
        """Autocast for the run's precision on its device type; a no-op for precision ``32``."""
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def shard_indices(self, n: int) -> range:
        """This rank's share of ``range(n)`` (strided: ``rank, rank + world_size, ...``)."""
        return range(self.rank, n, self.world_size)

    def reduce_mean(self, sums: Mapping[str, float], counts: Mapping[str, float]) -> Dict[str, float]:
        """``{k: sum over ranks of sums[k] / sum over ranks of counts[k]}`` over the union of every rank's keys.

        Ranks may pass different keys, or none at all (a rank whose validation shard is empty): the key lists are
        gathered first, so every rank then all-reduces a tensor of the same shape and no collective can hang. A
        key whose total count is 0 gives ``nan``.
        """
        if set(sums) != set(counts):
            raise ValueError(f"reduce_mean: sums keys {sorted(sums)} differ from counts keys {sorted(counts)}")
        keys = sorted(set().union(*all_gather_object(sorted(sums)))) if self.dist.distributed else sorted(sums)
        t = torch.tensor([float(sums.get(k, 0.0)) for k in keys] + [float(counts.get(k, 0.0)) for k in keys],
                         dtype=torch.float64)  # (2K,)
        if self.dist.distributed and self.device.type == "cuda":
            t = t.to(self.device)
        all_reduce_sum(t)
        t = t.cpu()
        n = len(keys)
        return {k: (t[i] / t[n + i]).item() if t[n + i] > 0 else float("nan") for i, k in enumerate(keys)}

    def log(self, values: Mapping[str, Any]) -> None:
        """Record ``values`` at the current step in ``metrics.jsonl`` and TensorBoard (rank 0 only writes)."""
        if self._log_fn is not None:
            self._log_fn(self.step, values)

    def progress(self, iterable: Iterable[T], description: str, total: Optional[int] = None) -> Iterator[T]:
        """Iterate with a progress display on rank 0 (plain iteration elsewhere)."""
        if self._progress_fn is None:
            return iter(iterable)
        return self._progress_fn(iterable, description, total)

"""The :class:`Context` a Task receives: device, ranks, autocast, sharding, reductions, logging, progress."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, Mapping, Optional, TypeVar

import torch

from engine.distributed import DistInfo, all_reduce_sum

__all__ = ["Context", "autocast_dtype"]

T = TypeVar("T")
_DTYPES = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a (normalised) precision, ``None`` for full precision."""
    return _DTYPES[precision]


class Context:
    """What a Task sees of the run.

    Args:
        dist: This process's rank, world size and device.
        precision: ``32``, ``bf16`` or ``16-mixed``.
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
        self.precision = precision
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
        """``{k: sum over ranks of sums[k] / sum over ranks of counts[k]}``; every rank must pass the same keys.

        A key whose total count is 0 gives ``nan``.
        """
        if set(sums) != set(counts):
            raise ValueError(f"reduce_mean: sums keys {sorted(sums)} differ from counts keys {sorted(counts)}")
        keys = sorted(sums)
        t = torch.tensor([float(sums[k]) for k in keys] + [float(counts[k]) for k in keys], dtype=torch.float64)
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

"""Process-group setup for ``torchrun`` and the few collectives the engine needs.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` then joins a
process group with NCCL (CUDA) or gloo (CPU). Without those variables everything runs in one process and the
collectives are identities.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import os
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from engine.errors import UserError

__all__ = ["DistInfo", "setup", "teardown", "resolve_device", "all_reduce_sum", "all_gather_object", "barrier",
           "broadcast_object"]


@dataclasses.dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``, and whether it made the group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``auto|cpu|cuda|cuda:N`` -> a ``torch.device``; under torchrun CUDA ranks use ``cuda:LOCAL_RANK``."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device: {device!r} requested but CUDA is not available (use --device cpu or auto)")
    if world_size > 1:
        if device not in ("auto", "cuda"):
            raise UserError(f"device: {device!r} cannot be used with torchrun; use cuda or auto "
                            "(each rank takes cuda:LOCAL_RANK)")
        index = local_rank
    else:
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UserError(f"device: cuda:{index} does not exist ({torch.cuda.device_count()} GPU(s) visible)")
    return torch.device("cuda", index)


def setup(device: str, timeout_s: float = 600.0) -> DistInfo:
    """Join the torchrun process group (if any) and pick this rank's device.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        timeout_s: How long a collective may wait before it fails (a rank that died or hangs then turns into an
            error on the others instead of a hang). Only used when this call creates the process group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank, world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    info = DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: Dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        atexit.register(_destroy)
        info.owns_group = True
    return info


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def teardown(info: DistInfo) -> None:
    """Synchronise the ranks at the end of a run.

    The process group stays up until the process exits (destroyed by an ``atexit`` hook): destroying and
    re-creating the default group under torchrun can hang, and a script may call ``fit`` several times.
    """
    if info.distributed and dist.is_initialized():
        dist.barrier()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in one process)."""
    if not _active():
        return [obj]
    out: List[Optional[Any]] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if _active():
        dist.barrier()

"""Seeds and RNG state: per-sample seeds, global seeding, and RNG snapshots that load with ``weights_only=True``.

Every training sample draws its augmentation randomness from a seed derived from ``(seed, epoch, index)``, so a
resumed run (or one with a different ``num_workers``) sees exactly the same augmented samples. The global RNGs
(python, numpy, torch CPU and CUDA) drive dropout and are saved in checkpoints as plain tensors and lists.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List

import numpy as np
import torch

__all__ = [
    "sample_seed", "epoch_seed", "rank_seed", "seed_everything", "get_rng_state", "set_rng_state", "isolated_rng",
]

_SAMPLE_TAG, _EPOCH_TAG, _RANK_TAG = 0, 1, 2


def _derive(*entropy: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy ``SeedSequence``)."""
    words = np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the augmentation randomness of sample ``index`` in ``epoch``."""
    return _derive(seed, _SAMPLE_TAG, epoch, index)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffling permutation of ``epoch``."""
    return _derive(seed, _EPOCH_TAG, epoch)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of the global RNGs (dropout, drop-path) of ``rank`` once the model is built."""
    return seed if rank == 0 else _derive(seed, _RANK_TAG, rank)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> Dict[str, Any]:
    """Snapshot of every global RNG, made only of tensors, lists, ints, floats and strings."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": list(py_state), "gauss": py_gauss},
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore a snapshot made by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    cuda: List[torch.Tensor] = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class isolated_rng:
    """Context manager: the global RNGs are restored on exit, whatever the body drew.

    Used around validation and around per-sample seeding in the main process, so neither shifts the dropout
    stream of training.
    """

    def __enter__(self) -> "isolated_rng":
        self._state = get_rng_state()
        return self

    def __exit__(self, *exc: Any) -> None:
        set_rng_state(self._state)

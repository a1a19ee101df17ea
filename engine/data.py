"""Deterministic, resumable, sharded training data.

The training stream is a pure function of ``(seed, step)``: epoch ``e`` is a permutation seeded by
``(seed, e)``; its ``b``-th global batch is ``perm[b*B:(b+1)*B]`` (``drop_last``); that batch is cut into
``world_size * grad_accum`` equal micro-batches, micro-batch ``a * world_size + rank`` going to ``rank`` at
accumulation step ``a``. Resuming at step ``s`` therefore starts the sampler at batch ``s % steps_per_epoch``
of epoch ``s // steps_per_epoch`` by index arithmetic; skipped batches are never loaded.

Each sample is fetched as ``dataset[(epoch, index)]`` through :class:`SeededDataset`, which seeds python,
numpy and torch (and ``set_random_state`` for MONAI datasets) from ``(seed, epoch, index)`` first.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.dataloader import default_collate

from engine.errors import UserError
from engine.seeding import epoch_seed, isolated_rng, sample_seed

__all__ = ["SeededDataset", "EpochBatchSampler", "steps_per_epoch", "micro_batch_size", "make_train_loader"]


class SeededDataset(Dataset):
    """Wraps a map-style dataset; ``ds[(epoch, index)]`` seeds every RNG from ``(seed, epoch, index)``.

    In the main process (``num_workers=0``) the global RNG state is restored afterwards, so sample seeding does
    not disturb the dropout stream.

    Args:
        dataset: Map-style dataset; if it has ``set_random_state(seed)`` (MONAI ``Randomizable``), it is called.
        seed: Run seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self._set_state = getattr(dataset, "set_random_state", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        epoch, index = key
        if torch.utils.data.get_worker_info() is not None:
            return self._fetch(epoch, index)
        with isolated_rng():
            return self._fetch(epoch, index)

    def _fetch(self, epoch: int, index: int) -> Any:
        s = sample_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        if self._set_state is not None:
            self._set_state(s % 2**32)
        return self.dataset[index]


def steps_per_epoch(num_samples: int, batch_size: int, source: str = "training dataset") -> int:
    """Optimizer steps per epoch (the last incomplete batch is dropped)."""
    if num_samples < batch_size:
        raise UserError(f"{source}: {num_samples} samples is fewer than batch_size {batch_size}")
    return num_samples // batch_size


def micro_batch_size(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Per-rank micro-batch: ``batch_size / (world_size * grad_accum)``, which must divide exactly."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise UserError(f"batch_size {batch_size} is not divisible by world_size {world_size} x grad_accum "
                        f"{grad_accum} = {parts}; pick a batch_size that is a multiple of {parts}")
    return batch_size // parts


class EpochBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Yields this rank's micro-batches of ``(epoch, index)`` keys for one epoch, from global batch ``start``.

    Args:
        num_samples: Length of the dataset.
        batch_size: Global batch size.
        world_size: Number of ranks.
        rank: This rank.
        grad_accum: Micro-batches per optimizer step and rank.
        seed: Run seed.
        epoch: Epoch number (seeds the permutation).
        start: First global batch to yield (batches before it are skipped without loading).
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int, rank: int, grad_accum: int,
                 seed: int, epoch: int, start: int = 0) -> None:
        self.micro = micro_batch_size(batch_size, world_size, grad_accum)
        self.num_batches = steps_per_epoch(num_samples, batch_size)
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start {start} outside [0, {self.num_batches}]")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.world_size, self.rank, self.grad_accum = world_size, rank, grad_accum
        self.seed, self.epoch, self.start = seed, epoch, start

    def __len__(self) -> int:
        return (self.num_batches - self.start) * self.grad_accum

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch) % 2**63)
        perm = torch.randperm(self.num_samples, generator=gen).tolist()
        for b in range(self.start, self.num_batches):
            batch = perm[b * self.batch_size:(b + 1) * self.batch_size]
            for a in range(self.grad_accum):
                chunk = a * self.world_size + self.rank
                yield [(self.epoch, i) for i in batch[chunk * self.micro:(chunk + 1) * self.micro]]


def make_train_loader(dataset: SeededDataset, sampler: EpochBatchSampler, num_workers: int,
                      collate_fn: Optional[Callable[[list], Any]], pin_memory: bool) -> DataLoader:
    """A DataLoader over ``sampler``'s micro-batches.

    It gets its own generator: a DataLoader iterator otherwise draws its worker base seed from the global torch
    RNG, which would shift the dropout stream whenever an iterator is created (e.g. on resume mid-epoch).
    """
    generator = torch.Generator().manual_seed(epoch_seed(sampler.seed, sampler.epoch) % 2**63)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, generator=generator,
                      collate_fn=collate_fn or default_collate, pin_memory=pin_memory)

"""The :class:`Task` protocol: what a pipeline hands to :func:`engine.fit`.

A Task builds the model and datasets, computes the loss of a batch and runs validation; the engine owns
everything else (devices, precision, DDP, optimisation, checkpoints, logging). See ``docs/engine.md``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Tuple, runtime_checkable

from torch import Tensor, nn
from torch.utils.data import Dataset

from engine.config import TrainConfig

__all__ = ["Task"]


@runtime_checkable
class Task(Protocol):
    """A training job, as seen by the engine.

    Attributes:
        monitor: Validation metric that picks ``checkpoints/best`` (e.g. ``"val/dice"``). Keys returned by
            :meth:`validate` without a ``/`` are logged as ``val/<key>``.
        monitor_mode: ``"max"`` or ``"min"``.

    ``resolve_config(cfg)`` and ``collate(samples)`` are optional; without it the engine uses ``torch.utils.data.default_collate``.
    """

    monitor: str
    monitor_mode: str

    def resolve_config(self, cfg: TrainConfig) -> TrainConfig:
        """Fill the run's defaults (model and data arguments, class names, recipe) and validate them; called by
        the engine on every rank before it writes ``config.yaml``, so the saved config is the one that runs.
        Must be idempotent (a resumed or replayed config passes through it again). Optional."""
        ...

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        """The model, on CPU; the engine moves it to the device and wraps it (DDP, compile)."""
        ...

    def build_datasets(self, cfg: TrainConfig) -> Tuple[Dataset, Optional[Dataset]]:
        """``(train, val)`` map-style datasets; ``val`` may be ``None``."""
        ...

    def training_step(self, model: nn.Module, batch: Any, ctx: Any) -> Tuple[Tensor, Dict[str, float]]:
        """Mean loss over ``batch`` (already on ``ctx.device``) and extra floats to log; run under autocast."""
        ...

    def validate(self, model: nn.Module, dataset: Dataset, ctx: Any) -> Dict[str, float]:
        """Metrics over ``dataset``; runs on every rank over ``ctx.shard_indices(len(dataset))``, combined with
        ``ctx.reduce_mean``. Called in ``eval()`` mode under ``torch.no_grad()``."""
        ...

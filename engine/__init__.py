"""vtk's one training engine, shared by the segmentation and video pipelines.

Example::

    >>> from engine import TrainConfig, fit
    >>> cfg = TrainConfig(task="seg", model="unetr", batch_size=4, max_steps=100, device="cpu")
    >>> result = fit(cfg, my_task)              # my_task follows engine.Task
    >>> cfg2, state_dict = load_run(result.out)  # best (else last) checkpoint

Names are imported lazily, so ``import engine.errors`` (done by ``vtk --help``) does not import torch.
See ``docs/engine.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "TrainConfig", "config_from_cli", "parse_key_values", "fit", "FitResult", "Context", "Task", "load_run",
    "UserError", "RunError", "VtkError",
]

_LAZY = {
    "TrainConfig": "engine.config", "config_from_cli": "engine.config", "parse_key_values": "engine.config",
    "fit": "engine.loop", "FitResult": "engine.loop", "Context": "engine.context", "Task": "engine.task",
    "load_run": "engine.checkpoint", "UserError": "engine.errors", "RunError": "engine.errors",
    "VtkError": "engine.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))

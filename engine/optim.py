"""Optimizers (AdamW, SGD) and learning-rate schedules (warmup-cosine, poly, constant).

Every schedule is a multiplier ``f(s)`` of the peak ``lr`` at optimizer step ``s`` (0-based):

* warmup (``s < W``): ``f = (s + 1) / W``
* ``constant``: ``f = 1``
* ``warmup-cosine``: ``f = 0.5 * (1 + cos(pi * p))`` with ``p = (s - W) / max(1, S - W)`` clipped to ``[0, 1]``
  (Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", arXiv:1608.03983)
* ``poly``: ``f = (1 - p) ** 0.9`` (the nnU-Net / DeepLab schedule; Chen et al., arXiv:1606.00915)

where ``W = warmup_steps`` and ``S = max_steps``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Sequence, Set

import torch
from torch import nn

from engine.config import TrainConfig

__all__ = ["POLY_POWER", "lr_factor", "fast_impl", "build_optimizer", "build_scheduler", "param_groups",
           "no_weight_decay_names", "current_lr"]

POLY_POWER = 0.9


def lr_factor(schedule: str, step: int, warmup_steps: int, max_steps: int) -> float:
    """The learning-rate multiplier of ``schedule`` at 0-based optimizer ``step``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = min(1.0, max(0.0, (step - warmup_steps) / max(1, max_steps - warmup_steps)))
    if schedule == "warmup-cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "poly":
        return (1.0 - p) ** POLY_POWER
    raise ValueError(f"unknown schedule {schedule!r}")


def no_weight_decay_names(model: nn.Module) -> Set[str]:
    """Full parameter names listed by ``no_weight_decay()`` of the model *and of every submodule*.

    A submodule's names are prefixed with its path, so UNETR's inner ViT (``vit.pos_embed``) or any model wrapping a
    backbone gets the same treatment as the backbone alone.
    """
    names: Set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names.update(f"{prefix}.{n}" if prefix else str(n) for n in fn())
    return names


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, object]]:
    """Two groups: weights with ``weight_decay``; biases, norms, other 1-D parameters and the names the model or
    any submodule lists in ``no_weight_decay()`` (timm's convention: position/time embeddings, class tokens)
    without it."""
    skip = no_weight_decay_names(model)
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fast_impl(params: Sequence[torch.Tensor]) -> Dict[str, bool]:
    """The fastest implementation torch's AdamW/SGD offer for ``params``: ``{"fused": True}`` (one kernel over
    all tensors; CPU and CUDA) when every parameter is a floating-point tensor on one device of a type the fused
    kernels support, else ``{"foreach": True}`` (multi-tensor ops) on one CUDA device, else ``{}`` (torch's
    default, the per-parameter loop).

    On CPU torch's default is the per-parameter loop (``foreach`` defaults on for CUDA only): about eight
    elementwise ops per tensor and step, ~40% of a ViT-B train step at batch 1. The fused kernel computes the
    same update (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101) in one pass
    over each tensor.
    """
    if not params:
        return {}
    devices = {p.device for p in params}
    if len(devices) != 1 or not all(p.is_floating_point() for p in params):
        return {}
    device = next(iter(devices))
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused_devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # private helper moved: the two device types torch has fused AdamW/SGD for since 2.4
        fused_devices = {"cpu", "cuda"}
    if device.type in fused_devices:
        return {"fused": True}
    return {"foreach": True} if device.type == "cuda" else {}


def build_optimizer(model: nn.Module, cfg: TrainConfig, fast: bool = True) -> torch.optim.Optimizer:
    """AdamW or SGD (with ``momentum``) over :func:`param_groups`.

    Args:
        model: The model, already on its device (the fused kernel is chosen for the parameters' device).
        cfg: ``optimizer``, ``lr``, ``weight_decay``, ``momentum``.
        fast: Use :func:`fast_impl`'s implementation; ``False`` gives torch's default (the same update, slower on
            CPU; kept for the side-by-side benchmark ``benchmarks/speed_fixes.py``).
    """
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    impl = fast_impl([p for g in groups for p in g["params"]]) if fast else {}  # type: ignore[union-attr]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **impl)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **impl)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; call ``step()`` once per optimizer step."""
    fn: Callable[[int], float] = lambda s: lr_factor(cfg.schedule, s, cfg.warmup_steps, cfg.max_steps)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the first parameter group."""
    groups: Iterable[dict] = optimizer.param_groups
    return float(next(iter(groups))["lr"])


"""Model facts without training: parameter count and forward FLOPs, built on the meta device (used by
``vtk models info`` and ``vtk models list``)."""

from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["build_meta", "count_params", "count_flops"]


def build_meta(reg: Any, name: str, overrides: Optional[Dict[str, Any]] = None) -> Any:
    """Build on the meta device (no memory, no init cost); a model whose constructor reads tensor values is built
    on the CPU and then moved to meta."""
    import torch
    try:
        with torch.device("meta"):
            return reg.create_model(name, **(overrides or {}))
    except (NotImplementedError, RuntimeError):
        return reg.create_model(name, **(overrides or {})).to("meta")


def count_params(model: Any) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: Any) -> Optional[int]:
    """Multiply-accumulates x 2 of one forward at ``pretrained_cfg['input_size']``, batch 1 (meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if size is None:
        return None
    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter, torch.no_grad():
        model.eval()(torch.randn(1, *size))
    return counter.get_total_flops()

"""``nn.Linear`` with a faster bf16 training backward on CPU.

Under CPU autocast (bf16 or fp16) with gradients on, PyTorch's ``addmm`` backward computes the weight gradient as
``grad.t() @ input`` with the transposed gradient as a strided view, which oneDNN multiplies at a fraction of its
bf16 rate where the contraction is long and the output wide (measured on an AMX Xeon, 2 threads, ViT-B's ``fc2``
``(768 x 788) @ (788 x 3072)``: 4.4 ms strided against 2.2 ms with the transpose made contiguous first, copy
included). On a CPU with AMX, :func:`linear` runs the same products with that one copy where it pays
(:func:`_transpose_first`); the forward, the saved tensors and every value are those of ``F.linear`` under
autocast (the gradients are bitwise equal in ``tests/backbones/test_linear.py``). Everywhere else (CPUs without
AMX, CUDA, fp32, inference, tracing for export) it is ``F.linear``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from engine.context import cpu_has_amx

__all__ = ["Linear", "linear", "uses_fast_backward"]


class _AutocastLinearCPU(torch.autograd.Function):
    """``y = x w^T + b`` on already-cast low-precision tensors, with the weight gradient on a contiguous
    transposed output gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)  # (..., N)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])  # (M, N)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (dy2 @ weight).view(*x.shape[:-1], weight.shape[1])  # (..., K)
        if ctx.needs_input_grad[1]:
            dyt = dy2.t()  # (N, M), strided
            if _transpose_first(*weight.shape):
                dyt = dyt.contiguous()
            dw = dyt @ x.reshape(-1, x.shape[-1])  # (N, M) @ (M, K) -> (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)  # (N,)
        return dx, dw, db


def _transpose_first(out_features: int, in_features: int) -> bool:
    """Whether the weight gradient of an ``(N, K)`` weight is faster with the transposed output gradient copied
    first.

    Only asked on AMX (:func:`uses_fast_backward`): oneDNN's AMX kernel reads the strided view slowly, its
    AVX-512 kernel does not. The copy costs
    ``M * N`` elements through a slow transpose, so even there it only pays where ``N`` is wide and the
    contraction is long: measured with 2 threads on an AMX Xeon (bf16, ``M`` tokens), ``N=768, K=3072`` (ViT-B's
    ``fc2``, M=788) 4.39 ms strided against 2.20 ms copied; ``N=384, K=1536`` 1.28x; but ``N=3072, K=768`` (``fc1``)
    0.86x, ``N=768, K=768`` 0.76x and ``N=96, K=384`` (Swin-T's first ``fc2``, M=3136) 0.61x. On the AMD EPYC
    (avx512_bf16, no AMX) the copy never pays: ``N=768, K=3072`` 0.98x, ``N=384, K=1536`` 0.89x, ``N=3072, K=768``
    0.74x (each shape timed alone, strided against copied product, 2 threads).
    """
    return in_features >= 2 * out_features and out_features >= 256


def uses_fast_backward(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` takes the CPU autocast training path for these tensors.

    Only on a CPU with AMX: elsewhere the copy never pays (:func:`_transpose_first`), and the path would be
    ``addmm``'s own backward behind a Python autograd Function (about 0.1 ms per call; 3% of Swin-T's 224^2 bf16
    step on the AMD EPYC).
    """
    return (x.device.type == "cpu" and weight.requires_grad and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and cpu_has_amx())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` (``(..., K) -> (..., N)``); under CPU autocast in training, the same values with the faster
    backward (see the module docstring). The casts are autocast's: input, weight and bias to the autocast dtype,
    the weight's gradient back to its own dtype."""
    if not uses_fast_backward(x, weight):
        return F.linear(x, weight, bias)
    dt = torch.get_autocast_dtype("cpu")
    b = None if bias is None else bias.to(dt)
    with torch.autocast("cpu", enabled=False):
        return _AutocastLinearCPU.apply(x.to(dt), weight.to(dt), b)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, keys and init) whose forward is :func:`linear`.

    Example::

        >>> fc = Linear(768, 3072)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     y = fc(torch.randn(4, 197, 768))          # bf16, faster backward on CPU
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

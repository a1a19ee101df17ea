"""Shared by the medvit networks built on MONAI blocks (UNETR, Swin-UNETR): argument checks and the view-free
instance norm of their decoders."""

from __future__ import annotations

from typing import Dict, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from engine.choices import check_choice
from engine.context import cpu_autocast_is_native

__all__ = ["check_norm_name", "decoder_channels_last", "to_channels_last", "ViewFreeInstanceNorm1d",
           "ViewFreeInstanceNorm2d", "ViewFreeInstanceNorm3d", "view_free_instance_norms"]


def check_norm_name(norm_name: Union[str, tuple]) -> Union[str, tuple]:
    """Return ``norm_name`` (MONAI's ``"instance"``, ``("group", {"num_groups": 8})``, ...) if MONAI's ``Norm``
    factory knows its name (case-insensitive, as MONAI), else raise ``ValueError`` with the choices."""
    from monai.networks.layers.factories import Norm  # slow import

    name = norm_name[0] if isinstance(norm_name, tuple) and norm_name else norm_name
    check_choice("norm_name", str(name).lower(), tuple(n.lower() for n in Norm.names), error=ValueError)
    return norm_name


def decoder_channels_last(x: torch.Tensor) -> bool:
    """Whether the conv decoder of a network fed ``x`` runs channels-last: under a CPU autocast (bf16/fp16) whose
    dtype this CPU multiplies natively.

    oneDNN keeps a convolution's output channels-last when its input is, the view-free instance norms keep it in
    bf16, so with every map of the decoder channels-last nothing is reordered between NCDHW and oneDNN's
    channels-last layout. Not done in fp32 (the matmuls dominate there and fp32 norm stats must stay exact), where
    the dtype is emulated (an AVX2 CPU: the fallback conv returns NCDHW, so the copies would be wasted) nor on
    CUDA (not measured there).
    """
    return x.device.type == "cpu" and x.dim() == 5 and cpu_autocast_is_native()


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, C, D, H, W)`` copied into explicit channels-last-3d strides.

    ``x.contiguous(memory_format=torch.channels_last_3d)`` returns a one-channel (or batch-1) tensor as it is, whose
    strides oneDNN then reads as NCDHW; a copy into ``torch.empty(..., memory_format=...)`` sets them.
    """
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    return out.copy_(x)  # (B, C, D, H, W), channels-last strides


def _view_free_forward(self: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor) -> torch.Tensor:
    """``nn.InstanceNormNd.forward`` whose output is a fresh tensor, not a view.

    ``F.instance_norm`` runs ``batch_norm`` on ``x`` viewed as ``(1, B*C, *S)`` and returns a *view* of the result;
    MONAI's blocks then apply in-place ops to it (``LeakyReLU(inplace=True)``, ``out += residual``), and an in-place
    op on a view makes autograd rebase the graph on ``CopySlices``, whose backward copies the full map two or three
    times (28 copies of ``(1, 16, 96, 96, 96)`` in a UNETR step, ~11% of it). The same ``batch_norm`` call made
    directly (``B == 1``) or through ``_unsafe_view`` (not a view to autograd) gives the same values without the
    copies. A bf16/fp16 channels-last input stays channels-last (``instance_norm`` makes it contiguous first; a
    batch of several goes through :func:`_channels_last_instance_norm`); in fp32 it is made contiguous as
    ``instance_norm`` does, since CPU ``batch_norm`` accumulates channels-last stats less exactly (1e-3 at 96^3,
    below bf16's rounding but not fp32's), so fp32 results are bit-identical.
    """
    if (self.track_running_stats or x.dim() != self._get_no_batch_dim() + 1
            or (self.affine and x.shape[1] != self.num_features)  # the stock op raises the library's error
            or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()):
        # exports keep the stock op: a trace would freeze the batch-1 branch, ONNX cannot size the folded view
        return nn.modules.instancenorm._InstanceNorm.forward(self, x)
    if not x.is_floating_point() or x.element_size() >= 4:
        x = x.contiguous()  # fp32: what instance_norm does (CPU batch_norm's channels-last stats are less exact)
    B, C = x.shape[:2]
    if B == 1:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)  # (1, C, *S)
    if x.device.type == "cpu" and _channels_last(x):
        return _channels_last_instance_norm(self, x)  # (B, C, *S), channels-last
    w = None if self.weight is None else self.weight.repeat(B)
    b = None if self.bias is None else self.bias.repeat(B)
    y = F.batch_norm(x.reshape(1, B * C, *x.shape[2:]), None, None, w, b, True, 0.0, self.eps)  # (1, B*C, *S)
    return torch.ops.aten._unsafe_view(y, x.shape)  # (B, C, *S), no view for autograd


def _channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D / 5-D map is laid out channels-last and not also contiguous (a one-channel or one-voxel map
    is both at once; its folded view costs no copy)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt is not None and x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


def _channels_last_instance_norm(norm: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor) -> torch.Tensor:
    """Instance norm of a channels-last bf16/fp16 batch ``(B, C, *S)``, ``B > 1``, on the CPU, with a channels-last
    result (CUDA keeps the folded view: not measured there).

    The folded ``(1, B*C, *S)`` view of :func:`_view_free_forward` is no view of a channels-last batch, so it
    copies the map to NCDHW and every convolution after it reorders back (UNETR 96^3 in bf16 on the AMD EPYC: a
    ``(4, 16, 96, 96, 96)`` 3^3 conv takes 178 ms on an NCDHW input, 93 ms channels-last). Without autograd
    (inference: sliding windows run in batches) it is ``group_norm`` with one group per channel, which equals the
    instance norm and has a channels-last CPU kernel (46 ms against 121 for the fold, that batch). With autograd
    it is ``batch_norm`` per sample, each of which keeps the layout (``group_norm``'s backward is 3x slower); the
    split's backward is one ``cat``.
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad
                                                                for p in (norm.weight, norm.bias)))):
        return F.group_norm(x, x.shape[1], norm.weight, norm.bias, norm.eps)  # (B, C, *S)
    return torch.cat([F.batch_norm(xi, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
                      for xi in x.split(1)])  # (B, C, *S)


class ViewFreeInstanceNorm1d(nn.InstanceNorm1d):
    """:class:`torch.nn.InstanceNorm1d` returning a fresh tensor (see :func:`view_free_instance_norms`)."""

    forward = _view_free_forward


class ViewFreeInstanceNorm2d(nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` returning a fresh tensor (see :func:`view_free_instance_norms`)."""

    forward = _view_free_forward


class ViewFreeInstanceNorm3d(nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` returning a fresh tensor (see :func:`view_free_instance_norms`)."""

    forward = _view_free_forward


_VIEW_FREE: Dict[Type[nn.Module], Type[nn.Module]] = {
    nn.InstanceNorm1d: ViewFreeInstanceNorm1d, nn.InstanceNorm2d: ViewFreeInstanceNorm2d,
    nn.InstanceNorm3d: ViewFreeInstanceNorm3d}


def view_free_instance_norms(module: nn.Module) -> int:
    """Turn every plain ``nn.InstanceNorm{1,2,3}d`` inside ``module`` into its ``ViewFree`` subclass, in place.

    Same state (no new attributes, so the same state-dict keys and values), same function; the output is not a
    view, so the in-place ops that MONAI's decoder blocks apply after the norm cost no backward copies (see
    :func:`_view_free_forward`). Returns how many norms were changed.
    """
    n = 0
    for m in module.modules():
        cls = _VIEW_FREE.get(type(m))
        if cls is not None:
            m.__class__ = cls
            n += 1
    return n

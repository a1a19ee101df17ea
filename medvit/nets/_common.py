"""Shared by the medvit networks built on MONAI blocks (UNETR, Swin-UNETR): argument checks and the view-free
instance norm of their decoders."""

from __future__ import annotations

from typing import Dict, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from engine.choices import check_choice

__all__ = ["check_norm_name", "ViewFreeInstanceNorm1d", "ViewFreeInstanceNorm2d", "ViewFreeInstanceNorm3d",
           "view_free_instance_norms"]


def check_norm_name(norm_name: Union[str, tuple]) -> Union[str, tuple]:
    """Return ``norm_name`` (MONAI's ``"instance"``, ``("group", {"num_groups": 8})``, ...) if MONAI's ``Norm``
    factory knows its name (case-insensitive, as MONAI), else raise ``ValueError`` with the choices."""
    from monai.networks.layers.factories import Norm  # slow import

    name = norm_name[0] if isinstance(norm_name, tuple) and norm_name else norm_name
    check_choice("norm_name", str(name).lower(), tuple(n.lower() for n in Norm.names), error=ValueError)
    return norm_name


def _view_free_forward(self: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor) -> torch.Tensor:
    """``nn.InstanceNormNd.forward`` whose output is a fresh tensor, not a view.

    ``F.instance_norm`` runs ``batch_norm`` on ``x`` viewed as ``(1, B*C, *S)`` and returns a *view* of the result;
    MONAI's blocks then apply in-place ops to it (``LeakyReLU(inplace=True)``, ``out += residual``), and an in-place
    op on a view makes autograd rebase the graph on ``CopySlices``, whose backward copies the full map two or three
    times (28 copies of ``(1, 16, 96, 96, 96)`` in a UNETR step, ~11% of it). The same ``batch_norm`` call made
    directly (``B == 1``) or through ``_unsafe_view`` (not a view to autograd) gives the same values without the
    copies, and keeps a channels-last input channels-last (``instance_norm`` makes it contiguous first).
    """
    if self.track_running_stats or x.dim() != self._get_no_batch_dim() + 1:
        return nn.modules.instancenorm._InstanceNorm.forward(self, x)
    if x.shape[1] != self.num_features and self.affine:
        return nn.modules.instancenorm._InstanceNorm.forward(self, x)  # raises the library's error
    B, C = x.shape[:2]
    if B == 1:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)  # (1, C, *S)
    w = None if self.weight is None else self.weight.repeat(B)
    b = None if self.bias is None else self.bias.repeat(B)
    y = F.batch_norm(x.reshape(1, B * C, *x.shape[2:]), None, None, w, b, True, 0.0, self.eps)  # (1, B*C, *S)
    return torch.ops.aten._unsafe_view(y, x.shape)  # (B, C, *S), no view for autograd


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

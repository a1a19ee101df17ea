"""Workarounds for pytorchvideo 0.1.5 (the last PyPI release, Jan 2022) on current torchvision.

``import pytorchvideo.transforms`` runs ``import torchvision.transforms.functional_tensor as F_t``; that module was
deprecated in torchvision 0.15 and removed in 0.17 (pytorch/vision#7953), so the import fails (pytorchvideo #251,
#258, #261). The fix exists on pytorchvideo main (eb04d1b) but was never released.
:func:`import_pytorchvideo_transforms`
maps the old module name to its private successor ``torchvision.transforms._functional_tensor`` (same functions:
``affine``, ``_blend``, ...) in ``sys.modules`` *only* when the old name is missing, and only when called: importing
vtk changes nothing. vtk's own pipeline does not need pytorchvideo transforms at all (it uses
``torchvision.transforms.v2``); the shim exists for users' pytorchvideo code and for the side-by-side benchmark.

pytorchvideo's ``decoder="decord"`` path reads audio through ``decord.AVReader`` and fails on videos without an audio
stream ("Can't find audio stream"), and it sets decord's global bridge to torch. vtk never uses it: see
:mod:`videovit.data.decode`.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["install_functional_tensor_shim", "import_pytorchvideo_transforms"]

_OLD = "torchvision.transforms.functional_tensor"
_NEW = "torchvision.transforms._functional_tensor"


def install_functional_tensor_shim() -> bool:
    """Alias ``torchvision.transforms.functional_tensor`` to ``_functional_tensor`` when it is missing.

    Returns:
        ``True`` if the alias was installed now, ``False`` if the old module exists (or the alias already does).
    """
    if _OLD in sys.modules:
        return False
    try:
        importlib.import_module(_OLD)
        return False
    except ModuleNotFoundError:
        pass
    new: ModuleType = importlib.import_module(_NEW)
    sys.modules[_OLD] = new
    import torchvision.transforms as tvt

    setattr(tvt, "functional_tensor", new)
    return True


def import_pytorchvideo_transforms() -> ModuleType:
    """``import pytorchvideo.transforms``, installing the ``functional_tensor`` shim first if needed."""
    install_functional_tensor_shim()
    return importlib.import_module("pytorchvideo.transforms")

"""A small model registry shared by ``backbones``, ``medvit`` and ``videovit``.

Each package owns one :class:`Registry`. Entry points are plain functions decorated with
``@registry.register_model``; they take ``pretrained`` plus keyword overrides (timm's names: ``img_size``,
``patch_size``, ``in_chans``, ``num_classes``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
``drop_path_rate``, ``num_frames``, ``tubelet_size``) and return an ``nn.Module``.

Example::

    >>> from backbones import create_model, list_models
    >>> list_models("vit_*")[:2]
    >>> model = create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1)
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Dict, List, Optional

from torch import nn

__all__ = ["Registry"]


class Registry:
    """Maps model names to entry-point functions.

    Args:
        package: Name shown in messages and in ``vtk models list`` (``backbones``, ``medvit``, ``videovit``).
    """

    def __init__(self, package: str) -> None:
        self.package = package
        self._entries: Dict[str, Callable[..., nn.Module]] = {}
        self._tiny: Dict[str, Dict[str, Any]] = {}

    def register_model(self, fn: Optional[Callable[..., nn.Module]] = None, *,
                       tiny: Optional[Dict[str, Any]] = None) -> Any:
        """Decorator: register ``fn`` under its ``__name__``.

        Use as ``@register_model`` or ``@register_model(tiny=dict(embed_dim=32, depth=2, ...))``. ``tiny`` gives
        overrides that make a small, fast instance of the same architecture; the registry-wide smoke test
        builds every model with them.
        """
        def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            name = f.__name__
            if name in self._entries:
                raise ValueError(f"model {name!r} is registered twice in {self.package}")
            self._entries[name] = f
            self._tiny[name] = dict(tiny or {})
            return f

        return wrap(fn) if fn is not None else wrap

    def tiny_overrides(self, name: str) -> Dict[str, Any]:
        """Overrides for a small instance of ``name`` (empty when the model is already small)."""
        self.entrypoint(name)
        return dict(self._tiny[name])

    def list_models(self, pattern: str = "*") -> List[str]:
        """Sorted names matching a shell-style ``pattern`` (e.g. ``'swin_*'``)."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def is_model(self, name: str) -> bool:
        return name in self._entries

    def entrypoint(self, name: str) -> Callable[..., nn.Module]:
        """The entry point for ``name``; a ``ValueError`` suggests close names when it is unknown."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; see `vtk models list`"
            raise ValueError(f"unknown {self.package} model {name!r}{hint}")
        return self._entries[name]

    def create_model(self, name: str, *, pretrained: Optional[Any] = None, **overrides: Any) -> nn.Module:
        """Build ``name``; overrides that are ``None`` are dropped, as in timm.

        Args:
            name: A registered model name.
            pretrained: ``None``, a checkpoint path (``.pth``, ``.pt``, ``.bin``, ``.safetensors``, ``.npz``)
                or a state dict. Its format is detected from marker keys.
            **overrides: Architecture overrides such as ``img_size=96`` or ``num_classes=14``.
        """
        kwargs = {k: v for k, v in overrides.items() if v is not None}
        return self.entrypoint(name)(pretrained=pretrained, **kwargs)

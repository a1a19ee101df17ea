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

import fnmatch
from typing import Any, Callable, Dict, List, Optional, Sequence

from torch import nn

from engine.choices import close_matches_hint

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
        self._meta: Dict[str, Dict[str, Any]] = {}
        self._aliases: Dict[str, str] = {}

    def register_model(self, fn: Optional[Callable[..., nn.Module]] = None, *,
                       tiny: Optional[Dict[str, Any]] = None, meta: Optional[Dict[str, Any]] = None,
                       aliases: Sequence[str] = ()) -> Any:
        """Decorator: register ``fn`` under its ``__name__``.

        Use as ``@register_model`` or ``@register_model(tiny=..., meta=..., aliases=("mvit",))``.

        Args:
            tiny: Overrides that make a small, fast instance of the same architecture; the registry-wide smoke
                test builds every model with them.
            meta: The entry's metadata, read by the pipelines instead of building the model: ``input_size``
                (``(C, H, W)``, ``(C, D, H, W)`` or ``(C, T, H, W)``), ``spatial_dims`` (2 or 3), ``num_frames``,
                ``mean``/``std`` and ``protocol`` (the test recipe: video ``stride``, ``views``, ``short_side``,
                ``crop_size``; segmentation ``roi``, ``spacing``, ``a_min``/``a_max``).
            aliases: Short names (a family name such as ``"timesformer"``) that resolve to this entry.
        """
        def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            name = f.__name__
            if name in self._entries:
                raise ValueError(f"model {name!r} is registered twice in {self.package}")
            for alias in aliases:
                if alias in self._aliases or alias in self._entries:
                    raise ValueError(f"alias {alias!r} of {name!r} is already taken in {self.package}")
            self._entries[name] = f
            self._tiny[name] = dict(tiny or {})
            self._meta[name] = dict(meta or {})
            self._aliases.update({a: name for a in aliases})
            return f

        return wrap(fn) if fn is not None else wrap

    def unregister(self, name: str) -> None:
        """Remove an entry and its aliases (tests that register throw-away models clean up with this)."""
        name = self.resolve(name)
        for table in (self._entries, self._tiny, self._meta):
            table.pop(name, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def resolve(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; unknown names are returned unchanged."""
        return self._aliases.get(name, name)

    def aliases(self) -> Dict[str, str]:
        """``{alias: registered name}``."""
        return dict(self._aliases)

    def tiny_overrides(self, name: str) -> Dict[str, Any]:
        """Overrides for a small instance of ``name`` (empty when the model is already small)."""
        self.entrypoint(name)
        return dict(self._tiny[self.resolve(name)])

    def metadata(self, name: str) -> Dict[str, Any]:
        """A copy of the entry's ``meta`` (see :meth:`register_model`) plus its ``name`` and ``package``."""
        self.entrypoint(name)
        name = self.resolve(name)
        return {**self._meta[name], "name": name, "package": self.package}

    def list_models(self, pattern: str = "*") -> List[str]:
        """Sorted names matching a shell-style ``pattern`` (e.g. ``'swin_*'``)."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def is_model(self, name: str) -> bool:
        """Whether ``name`` is a registered name or alias."""
        return self.resolve(name) in self._entries

    def entrypoint(self, name: str) -> Callable[..., nn.Module]:
        """The entry point for ``name`` (or an alias); a ``ValueError`` suggests close names when it is unknown."""
        resolved = self.resolve(name)
        if resolved not in self._entries:
            hint = close_matches_hint(name, [*self._entries, *self._aliases]) or "; see `vtk models list`"
            raise ValueError(f"unknown {self.package} model {name!r}{hint}")
        return self._entries[resolved]

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

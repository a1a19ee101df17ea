"""Import the model modules of a package so their ``@register_model`` entries exist."""

from __future__ import annotations

import importlib
from typing import Iterable

__all__ = ["import_model_modules"]


def import_model_modules(modules: Iterable[str]) -> None:
    """Import each module of an explicit list; a missing module is an error (it would silently drop models)."""
    for mod in modules:
        importlib.import_module(mod)

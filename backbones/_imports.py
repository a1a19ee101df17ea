"""Import the model modules of a package so their ``@register_model`` entries exist."""

from __future__ import annotations

import importlib
from typing import Iterable

__all__ = ["import_model_modules"]


def import_model_modules(modules: Iterable[str]) -> None:
    """Import each module; one that does not exist (yet) is skipped, any other import error is raised."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise

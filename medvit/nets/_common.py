"""Argument checks shared by the medvit networks built on MONAI blocks (UNETR, Swin-UNETR)."""

from __future__ import annotations

from typing import Union

from engine.choices import check_choice

__all__ = ["check_norm_name"]


def check_norm_name(norm_name: Union[str, tuple]) -> Union[str, tuple]:
    """Return ``norm_name`` (MONAI's ``"instance"``, ``("group", {"num_groups": 8})``, ...) if MONAI's ``Norm``
    factory knows its name (case-insensitive, as MONAI), else raise ``ValueError`` with the choices."""
    from monai.networks.layers.factories import Norm  # slow import

    name = norm_name[0] if isinstance(norm_name, tuple) and norm_name else norm_name
    check_choice("norm_name", str(name).lower(), tuple(n.lower() for n in Norm.names), error=ValueError)
    return norm_name

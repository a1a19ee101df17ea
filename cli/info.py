"""``vtk info``: library versions, the compute device and the thread count, as a table (for bug reports)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import List, Tuple

from cli.apps import app

__all__ = ["info", "collect_info"]

_DISTRIBUTIONS = ("vtk", "torch", "torchvision", "monai", "pytorchvideo", "decord", "timm", "transformers",
                  "safetensors", "numpy")
_OPTIONAL = {"timm", "transformers"}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _device_rows() -> List[Tuple[str, str]]:
    import torch

    from engine.context import resolve_precision

    rows = [("torch CUDA build", torch.version.cuda or "none (CPU build)")]
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        rows += [("device", f"cuda:{idx} ({torch.cuda.device_count()} visible)"),
                 ("GPU", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}"),
                 ("bf16 supported", str(torch.cuda.is_bf16_supported()))]
    else:
        rows += [("device", "cpu (no CUDA device)"), ("bf16 supported", _cpu_bf16())]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows += [("precision auto", resolve_precision("auto", device)), ("torch threads", str(torch.get_num_threads()))]
    return rows


def _cpu_bf16() -> str:
    """Whether this CPU's bf16 is native (and by which instructions) or emulated."""
    from engine.context import EMULATED_WHY, cpu_has_amx, cpu_has_native_bf16

    if cpu_has_amx():
        return "native (AMX)"
    if cpu_has_native_bf16():
        return "native (avx512_bf16)"
    return f"emulated ({EMULATED_WHY['bf16']}: bf16 is many times slower than fp32 here)"


def collect_info() -> List[Tuple[str, str]]:
    """``(name, value)`` rows: python, library versions (metadata only, no imports), device, threads."""
    rows = [("python", f"{platform.python_version()} ({platform.system()} {platform.machine()})")]
    for dist in _DISTRIBUTIONS:
        version = _version(dist)
        if dist in _OPTIONAL and version == "not installed":
            continue
        rows.append((dist, version))
    return rows + _device_rows()


@app.command("info")
def info() -> None:
    """Show versions of python, vtk, torch, monai, pytorchvideo, decord, ... and the compute device.

    Example: vtk info
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vtk environment", show_header=True, header_style="bold")
    table.add_column("item", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in collect_info():
        table.add_row(name, value)
    Console(soft_wrap=False).print(table)

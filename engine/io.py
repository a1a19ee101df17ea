"""The one atomic writer: every file vtk writes goes through here.

A write fills a uniquely named temporary file in the destination folder (``tempfile.mkstemp``, so two processes
writing the same path never share a temporary), flushes and fsyncs it, then moves it into place with
``os.replace`` and fsyncs the folder. A failing writer leaves the destination as it was and removes its temporary.
Temporaries are named ``.<name>.<random>.tmp``; :func:`clean_stale_temporaries` removes leftovers of a crash.

Example::

    >>> from engine.io import atomic_write_json, atomic_savefig
    >>> atomic_write_json("runs/x/metrics.json", {"dice": 0.8})
    >>> atomic_savefig(fig, "runs/x/confusion.png")
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, List, Union

__all__ = ["silenced_fd", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_savefig",
           "clean_stale_temporaries", "fsync_dir", "TMP_SUFFIX"]

PathLike = Union[os.PathLike, str]
TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], *, suffix: str = "") -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same folder, then ``os.replace``.

    Args:
        path: Destination; its folder is created.
        write: Fills the open binary file.
        suffix: Extra ending of the temporary's name before ``.tmp`` (writers that pick a format from the
            file name, such as matplotlib, get it from ``write``'s own arguments instead).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the permissions open() would give
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: PathLike) -> None:
    """Flush a folder's entries (a rename is durable only after this)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 1, allow_nan: bool = False) -> Path:
    """:func:`atomic_write` of ``obj`` as JSON (strict: NaN is an error unless ``allow_nan``), newline-terminated."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")


def atomic_savefig(fig: Any, path: PathLike, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically; the format comes from ``path``'s suffix (``.png``, ``.pdf``, ...)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    kwargs = {"dpi": 100, **savefig_kwargs, "format": fmt}
    return atomic_write(path, lambda f: fig.savefig(f, **kwargs))


def clean_stale_temporaries(folder: PathLike, recursive: bool = True) -> List[Path]:
    """Remove ``.<name>.<random>.tmp`` files that a crashed writer left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".*{TMP_SUFFIX}"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for p in found:
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def silenced_fd(fd: int) -> Iterator[None]:
    """Point file descriptor ``fd`` (1 or 2) at ``/dev/null`` for the block, for C/C++ code that writes to it
    directly (decord's dmlc logger on stderr, the TorchScript ONNX exporter's graph dumps on stdout). Python-level
    errors still reach the caller as exceptions. Does nothing where the descriptor cannot be duplicated."""
    stream = sys.stdout if fd == 1 else sys.stderr
    try:
        stream.flush()
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):  # no real descriptor (embedded interpreter): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)

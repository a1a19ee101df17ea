"""An exclusive lock on a run folder, so two processes never train into the same folder at once.

The lock is an ``flock`` on ``RUN/.lock``, held by rank 0 for the whole run; the kernel releases it when the process
exits, however it exits (kill -9 included), so a stale lock can never block a resume.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from engine.errors import UserError

__all__ = ["RunLock"]


class RunLock:
    """``with RunLock(folder):`` or ``lock = RunLock(folder).acquire(); ...; lock.release()``.

    Args:
        folder: The run folder (created if missing).

    Raises:
        UserError: Another process holds the lock (its pid is named when known).
    """

    def __init__(self, folder: os.PathLike | str) -> None:
        self.path = Path(folder) / ".lock"
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise UserError(f"{self.path.parent}: run folder is in use by another vtk process{who}; wait for it "
                            "to finish or pick another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

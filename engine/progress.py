"""Training progress: a rich progress bar (ETA, loss, samples/s, GPU memory) or plain periodic log lines.

Only rank 0 shows anything. ``quiet=True``, or a stdout that is not a terminal, selects plain lines such as
``step 120/1000 loss 0.4312 lr 9.8e-05 41.2 samples/s mem 3.1GiB eta 0:05:12``, suited to logs and CI.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TypeVar

import torch

__all__ = ["TrainProgress", "WorkProgress", "ItemProgress", "format_eta"]

T = TypeVar("T")


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` for a non-negative number of seconds."""
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def _say(progress: Any, text: str) -> None:
    """Print ``text`` above ``progress``'s rich bar (or as a plain line) when that progress is enabled."""
    if not progress.enabled:
        return
    if progress._bar is not None:
        progress._bar.console.print(text, markup=False, highlight=False)
    else:
        print(text, flush=True)


class TrainProgress:
    """Progress display for the training loop and for ``ctx.progress`` iterables.

    Args:
        total: ``max_steps``.
        start: Step the run starts at (non-zero when resuming).
        enabled: Whether this process shows progress (rank 0).
        quiet: Plain log lines instead of a bar; forced when stdout is not a terminal.
        device: The run's device; on CUDA the peak allocated memory is shown.
        log_every: Plain-mode line period, in steps.
    """

    def __init__(self, total: int, start: int, enabled: bool, quiet: bool, device: torch.device,
                 log_every: int) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.quiet = quiet or not sys.stdout.isatty()
        self.device, self.log_every = device, log_every
        self._bar: Optional[Any] = None
        self._task: Optional[int] = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> "TrainProgress":
        self._t0 = time.perf_counter()
        if self.enabled and not self.quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[stats]}"), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, stats="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _memory(self) -> str:
        if self.device.type != "cuda":
            return ""
        return f" mem {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f}GiB"

    def update(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Report that ``step`` (1-based) finished."""
        if not self.enabled:
            return
        stats = f"loss {loss:.4f} lr {lr:.3g} {samples_per_s:.1f} samples/s{self._memory()}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=stats)
        elif step % self.log_every == 0 or step == self.total or step == self.start + 1:  # first line at once
            done = step - self.start
            eta = (time.perf_counter() - self._t0) / max(1, done) * (self.total - step)
            print(f"step {step}/{self.total} {stats} eta {format_eta(eta)}", flush=True)

    def message(self, text: str) -> None:
        """Print a line (validation results, checkpoint notes) without breaking the bar."""
        _say(self, text)

    def wrap(self, iterable: Iterable[T], description: str, total: Optional[int] = None) -> Iterator[T]:
        """Iterate ``iterable`` with a nested bar (a no-op display in plain mode or on other ranks)."""
        if self._bar is None:
            yield from iterable
            return
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        task = self._bar.add_task(description, total=total, stats="")
        try:
            for item in iterable:
                yield item
                self._bar.advance(task)
        finally:
            self._bar.remove_task(task)


class WorkProgress:
    """Progress over cases and the units of work inside each (sliding windows of inference), with an ETA.

    A rich bar with two rows (cases, windows of the current case) on a terminal; otherwise plain lines such as
    ``img0001.nii.gz: windows 120/480 eta case 0:00:41 eta all 0:02:03`` at most every ``every_s`` seconds and
    at the end of each case.

    Args:
        cases: Number of cases.
        enabled: Whether this process shows anything.
        quiet: Plain lines instead of a bar; forced when stdout is not a terminal.
        every_s: Plain-mode line period in seconds.
    """

    def __init__(self, cases: int, enabled: bool = True, quiet: bool = False, every_s: float = 10.0) -> None:
        self.cases, self.enabled, self.every_s = cases, enabled, every_s
        self.quiet = quiet or not sys.stdout.isatty()
        self._bar: Optional[Any] = None
        self._case_task = self._unit_task = None
        self._done_cases, self._name, self._units, self._done = 0, "", 0, 0
        self._t0 = self._case_t0 = self._last = time.perf_counter()

    def __enter__(self) -> "WorkProgress":
        self._t0 = time.perf_counter()
        if self.enabled and not self.quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._case_task = self._bar.add_task("cases", total=self.cases)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def start_case(self, name: str, units: int) -> None:
        """A case of ``units`` windows begins."""
        self._name, self._units, self._done = name, max(1, int(units)), 0
        self._case_t0 = self._last = time.perf_counter()
        if self._bar is not None:
            if self._unit_task is not None:
                self._bar.remove_task(self._unit_task)
            self._unit_task = self._bar.add_task(f"{name} windows", total=self._units)

    def advance(self, n: int = 1) -> None:
        """``n`` more windows of the current case are done."""
        self._done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.advance(self._unit_task, n)
        elif time.perf_counter() - self._last >= self.every_s:
            self._last = time.perf_counter()
            print(self.line(), flush=True)

    def end_case(self) -> None:
        """The current case is done (written)."""
        self._done = self._units
        if self.enabled and self._bar is None:
            print(self.line(), flush=True)
        self._done_cases += 1
        if self.enabled and self._bar is not None:
            self._bar.advance(self._case_task)

    def eta(self) -> tuple:
        """``(seconds left in this case, seconds left in all cases)`` extrapolated from the work so far."""
        now = time.perf_counter()
        case = (now - self._case_t0) / max(1, self._done) * max(0, self._units - self._done)
        per_case = (now - self._t0) / max(1e-9, self._done_cases + min(1.0, self._done / self._units))
        left = max(0, self.cases - self._done_cases - 1) * per_case + case
        return case, left

    def line(self) -> str:
        """The plain-mode progress line."""
        case, left = self.eta()
        return (f"case {min(self._done_cases + 1, self.cases)}/{self.cases} {self._name}: windows "
                f"{min(self._done, self._units)}/{self._units} eta case {format_eta(case)} eta all {format_eta(left)}")

    def message(self, text: str) -> None:
        """Print a line without breaking the bar."""
        _say(self, text)


class ItemProgress:
    """Progress of eval/predict work counted in items (videos, windows): a rich bar with items/s and ETA, or plain
    lines such as ``eval val: 120/20000 videos 14.2 videos/s eta 0:23:21`` on stderr when stderr is no terminal.

    Args:
        total: Items to do (this rank's share under torchrun).
        description: What is being done (``eval val``).
        unit: Item name in the plain lines and the bar (``videos``).
        enabled: Whether this process shows anything (rank 0).
        every_s: Plain-mode line period in seconds (the first and the last item always print).
    """

    def __init__(self, total: int, description: str, unit: str = "videos", enabled: bool = True,
                 every_s: float = 10.0) -> None:
        self.total, self.description, self.unit = int(total), description, unit
        self.enabled, self.every_s = enabled, every_s
        self.done = 0
        self._bar: Optional[Any] = None
        self._t0 = self._last = time.perf_counter()

    def __enter__(self) -> "ItemProgress":
        self._t0 = self._last = time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(self.unit), TextColumn("{task.fields[rate]}"), TextColumn("eta"),
                                 TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, rate="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def set_total(self, total: int) -> None:
        """Change the number of items to do (known only once the work is planned)."""
        self.total = int(total)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.done / max(time.perf_counter() - self._t0, 1e-9)

    def advance(self, n: int = 1) -> None:
        """Report ``n`` more items done."""
        self.done += n
        if not self.enabled or self.total <= 0:
            return
        rate = self.rate
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{rate:.2f} {self.unit}/s")
            return
        now = time.perf_counter()
        if self.done in (n, self.total) or now - self._last >= self.every_s:
            self._last = now
            eta = (self.total - self.done) / max(rate, 1e-9)
            print(f"{self.description}: {self.done}/{self.total} {self.unit} {rate:.2f} {self.unit}/s "
                  f"eta {format_eta(eta)}", file=sys.stderr, flush=True)

"""The run's metric sinks: ``metrics.jsonl`` (one JSON object per log call) and TensorBoard events.

Only rank 0 writes. On resume, lines logged after the checkpoint's step are dropped (atomically), so the file
reads as if the run had never been interrupted; TensorBoard gets ``purge_step`` for the same effect.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from engine.checkpoint import atomic_write_text

__all__ = ["RunLogger", "read_metrics", "truncate_metrics"]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: Path | str) -> List[Dict[str, Any]]:
    """Every record of a ``metrics.jsonl`` (or a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records with ``step`` greater than ``step`` (keeps a resumed run's log consistent)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))


class RunLogger:
    """Appends metric records to ``out/metrics.jsonl`` and TensorBoard (rank 0 only).

    Args:
        out: Run folder.
        enabled: Whether this process writes (rank 0).
        purge_step: First step of a resumed run; stale records after it are removed.
    """

    def __init__(self, out: Path, enabled: bool, purge_step: Optional[int] = None) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        path = out / "metrics.jsonl"
        if purge_step is not None:
            truncate_metrics(path, purge_step)
        self._file = open(path, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(out), purge_step=purge_step)

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        """Write ``{"step": step, **values}``; numeric values also go to TensorBoard."""
        if not self.enabled or self._file is None:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

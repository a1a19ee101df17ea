"""``vtk data check``: every missing and every unreadable video of a dataset's splits, found in one pass.

A listed video is *missing* when its file does not exist (``VideoList.missing``) and *unreadable* when its first or
last frame does not decode (decord, then PyAV) or the file is truncated (its index lists more frames than it
holds). A split whose list cannot be used (a malformed line, a label that is not a class, a validation label that
is not a training class) is one problem row naming ``file:line``. The CLI prints :attr:`CheckResult.summary` and
:attr:`CheckResult.problems` as tables.

Example::

    >>> result = check_dataset("kinetics400", Path("data/k400"))
    >>> result.ok, result.summary[0]
    (True, ('train', 'csv', 12, 0, 0, 3))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from engine.errors import UserError

from .decode import VideoReader
from .layouts import MissingSplit, load_dataset

__all__ = ["SUMMARY_COLUMNS", "PROBLEM_COLUMNS", "CheckResult", "probe_video", "check_dataset"]

SUMMARY_COLUMNS = ("split", "layout", "listed", "missing", "unreadable", "classes")
PROBLEM_COLUMNS = ("split", "file", "problem")


@dataclasses.dataclass
class CheckResult:
    """Outcome of :func:`check_dataset`.

    Attributes:
        summary: One row per split, in :data:`SUMMARY_COLUMNS` order.
        problems: One ``(split, file, problem)`` row per missing or unreadable video (:data:`PROBLEM_COLUMNS`).
    """

    summary: List[Tuple[str, str, int, int, int, int]]
    problems: List[Tuple[str, str, str]]

    @property
    def ok(self) -> bool:
        """Whether every listed video exists and decodes."""
        return not self.problems


def probe_video(path: Path, backend: str = "auto") -> Optional[str]:
    """``None`` if the first and last frames of ``path`` decode, else the problem (without the path)."""
    try:
        reader = VideoReader(path, backend=backend)
        reader.get_batch([0, len(reader) - 1])
    except UserError as e:
        return str(e).replace(f"{path}: ", "")
    return None


def check_dataset(data: str, data_dir: Path, layout: str = "auto", fold: int = 1,
                  splits: Sequence[str] = ("train", "val")) -> CheckResult:
    """Load each split of ``data`` at ``data_dir`` and probe every listed video.

    Args:
        data: ``kinetics400``, ``ucf101`` or ``csv``.
        data_dir: Dataset folder.
        layout: Kinetics layout (``auto``, ``csv``, ``folders``, ``official``).
        fold: UCF101 split list (1-3).
        splits: Splits to check.

    Raises:
        UserError: The training split does not exist (a malformed split is a problem row instead).
    """
    summary, problems = [], []
    classes = None  # the training classes, once read: later splits' labels must be among them
    for split in splits:
        try:
            vl = load_dataset(data, Path(data_dir), split, classes=classes, layout=layout, fold=fold)
        except MissingSplit:
            if split == "train":
                raise
            continue  # no such split: nothing to check
        except UserError as e:  # the split's list is unusable: one row, then the other splits
            where, _, why = str(e).partition(": ")
            problems.append((split, where, why or str(e)))
            summary.append((split, "?", 0, 0, 0, 0))
            continue
        if split == "train":
            classes = vl.classes
        problems += [(split, str(p), "missing") for p in vl.missing]
        bad = [(split, str(p), why) for p, _ in vl.samples if (why := probe_video(p)) is not None]
        problems += bad
        summary.append((split, vl.layout, len(vl.samples) + len(vl.missing), len(vl.missing), len(bad),
                        len(vl.classes)))
    return CheckResult(summary, problems)

"""Dataset layouts: Kinetics-400 (three layouts) and UCF101, resolved to a list of ``(path, label)`` samples.

Kinetics-400 (Kay et al., "The Kinetics Human Action Video Dataset", arXiv:1705.06950) is distributed and re-packed
in several ways; all of them resolve to the same :class:`VideoList`:

* ``csv``: the pytorchvideo / PySlowFast / TimeSformer ``{split}.csv`` with space-separated ``path label`` lines;
  paths are relative to the data dir (or absolute). Class names come from ``classids.json`` (PySlowFast) or
  ``classes.txt`` when present.
* ``folders``: ``{split}/<class>/<video>`` (folder per class, classes sorted by name, as pytorchvideo and
  torchvision do).
* ``official``: the CVDF ``annotations/{split}.csv`` with header ``label,youtube_id,time_start,time_end,split[,is_cc]``
  (labels may be quoted) and files ``{ytid}_{start:06d}_{end:06d}.mp4`` in flat split folders or per-class folders.

About 3% of Kinetics videos are missing from every copy; rows whose file does not exist are skipped and counted in
``VideoList.missing`` instead of failing.

UCF101 (Soomro et al., "UCF101: A Dataset of 101 Human Actions Classes From Videos in The Wild", arXiv:1212.0402):
``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` with ``ucfTrainTestlist/classInd.txt``, ``trainlist0N.txt`` (1-indexed
labels) and ``testlist0N.txt`` (paths only, label from ``classInd``).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from engine.errors import UserError

__all__ = ["VideoList", "MissingSplit", "VIDEO_EXTS", "KINETICS_LAYOUTS", "load_kinetics", "load_csv",
           "load_folders", "load_official", "load_ucf101", "load_dataset", "detect_kinetics_layout"]

_LOG = logging.getLogger(__name__)
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
KINETICS_LAYOUTS = ("auto", "csv", "folders", "official")
# Split aliases: the official release says "validate", pytorchvideo and PySlowFast say "val".
_SPLIT_ALIASES = {"train": ("train",), "val": ("val", "validate", "valid"), "test": ("test",)}


class MissingSplit(UserError):
    """The data dir has no list or folder for the split at all (e.g. no validation split): callers that treat the
    split as optional catch this, never the :class:`UserError` of a split that exists but is malformed."""


@dataclass
class VideoList:
    """Samples of one split.

    Attributes:
        samples: ``(path, label)`` pairs of the videos that exist.
        classes: Class names; ``classes[label]`` names a label.
        missing: Paths listed by the annotation but absent on disk (skipped, not fatal).
        layout: The layout that was read (``csv``, ``folders``, ``official``, ``ucf101``).
    """

    samples: List[Tuple[Path, int]]
    classes: List[str]
    missing: List[Path] = field(default_factory=list)
    layout: str = ""

    def __len__(self) -> int:
        return len(self.samples)


def _split_names(split: str) -> Sequence[str]:
    if split not in _SPLIT_ALIASES:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(_SPLIT_ALIASES)}")
    return _SPLIT_ALIASES[split]


def _first_existing(root: Path, names: Sequence[str], suffix: str = "") -> Optional[Path]:
    for name in names:
        p = root / f"{name}{suffix}"
        if p.exists():
            return p
    return None


def _class_file_names(root: Path) -> Optional[Tuple[Path, List[str]]]:
    """``(file, names)`` from ``classids.json`` (``{name: id}``, ids exactly ``0..K-1``) or ``classes.txt``, else
    ``None``.

    Raises:
        UserError: A ``classids.json`` that is not such an object (the message names the file).
    """
    ids, txt = root / "classids.json", root / "classes.txt"
    if ids.is_file():
        try:
            mapping = json.loads(ids.read_text())
            pairs = sorted(((int(v), str(n)) for n, v in mapping.items()), key=lambda kv: kv[0])
        except (ValueError, AttributeError, TypeError) as e:
            raise UserError(f"{ids}: not a JSON object of class name -> id ({' '.join(str(e).split())})") from None
        got = [i for i, _ in pairs]
        if got != list(range(len(pairs))):
            raise UserError(f"{ids}: class ids must be 0..{len(pairs) - 1}, each once; got {_ranges(got)}")
        return ids, [n for _, n in pairs]
    if txt.is_file():
        return txt, [line.strip() for line in txt.read_text().splitlines() if line.strip()]
    return None


def _ranges(values: Sequence[int], limit: int = 6) -> str:
    """``"0-2, 5, 7-9"`` for sorted unique ints (the first ``limit`` runs, then ``...``)."""
    runs: List[List[int]] = []
    for v in sorted(set(values)):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    return ", ".join(text) + (", ..." if len(runs) > limit else "")


def _csv_classes(path: Path, root: Path, rows: Sequence[Tuple[int, int]], classes: Optional[Sequence[str]],
                 num_classes: Optional[int], strict: bool) -> List[str]:
    """The class names of a ``path label`` csv whose ``(line, label)`` pairs are ``rows``, every label checked.

    Labels index, in this order of preference: ``classes`` (the training classes, for a validation split), the
    names of ``classids.json`` / ``classes.txt``, ``num_classes`` (``--data-arg num_classes=K``), else the labels
    themselves: a plain training csv must then use every class ``0..K-1`` (``strict``), so a stray label 99 cannot
    silently build a 100-class model.

    Raises:
        UserError: A negative label or one outside the class list, naming ``file:line``.
    """
    for n, y in rows:
        if y < 0:
            raise UserError(f"{path}:{n}: label {y} is negative (labels are class indices 0..K-1)")
    named = _class_file_names(root) if classes is None else None
    if classes is not None:
        names, source = list(classes), f"the {len(classes)} training classes"
    elif named is not None:
        names, source = named[1], f"{named[0].name} ({len(named[1])} classes)"
        if num_classes is not None and int(num_classes) != len(names):
            raise UserError(f"--data-arg num_classes={num_classes}: {named[0]} lists {len(names)} classes")
    elif num_classes is not None:
        if int(num_classes) < 1:
            raise UserError(f"--data-arg num_classes={num_classes}: must be >= 1")
        names, source = [str(i) for i in range(int(num_classes))], f"--data-arg num_classes={num_classes}"
    else:
        k = max((y for _, y in rows), default=-1) + 1
        used = {y for _, y in rows}
        if strict and len(used) < k:
            n = next(n for n, y in rows if y == k - 1)
            unused = sorted(set(range(k)) - used)
            raise UserError(f"{path}:{n}: label {k - 1} makes {k} classes but no video has label {_ranges(unused)}; "
                            f"a plain csv must use every class 0..{k - 1}: fix the label, or give --data-arg "
                            f"num_classes={k} (or a classids.json / classes.txt)")
        return [str(i) for i in range(k)]
    for n, y in rows:
        if y >= len(names):
            raise UserError(f"{path}:{n}: label {y} is not a class: {source} are 0..{len(names) - 1}")
    return names


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


def _is_official_csv(path: Path) -> bool:
    with open(path, newline="") as f:
        head = f.readline().strip().lower()
    return head.replace('"', "").startswith("label,youtube_id")


def load_csv(root: Path, split: str = "train", csv_path: Optional[Path] = None,
             classes: Optional[Sequence[str]] = None, num_classes: Optional[int] = None) -> VideoList:
    """Read a pytorchvideo / PySlowFast ``path label`` csv (space separated; comma also accepted).

    Args:
        root: Data dir; relative paths and ``classids.json`` / ``classes.txt`` are looked up here.
        split: ``train``, ``val`` or ``test``.
        csv_path: The list file (default ``root/{split}.csv``).
        classes: The training classes (for a validation split: every label must be one of them).
        num_classes: Class count of a plain csv (no class-name file) whose split does not use every class.

    Raises:
        UserError: No list file, a malformed line, or a label that is not a class (``file:line``).
    """
    root = Path(root)
    path = Path(csv_path) if csv_path else _first_existing(root, _split_names(split), ".csv")
    if path is None or not path.is_file():
        raise MissingSplit(f"{root}: no {split}.csv (pytorchvideo 'path label' list)")
    rows: List[Tuple[Path, int]] = []
    lines: List[Tuple[int, int]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(" ", 1) if " " in line.strip() else line.strip().rsplit(",", 1)
        try:
            rows.append((_resolve(root, parts[0].strip()), int(parts[1])))
        except (IndexError, ValueError) as e:
            raise UserError(f"{path}:{n}: expected 'path label', got {line.strip()[:80]!r}") from e
        lines.append((n, rows[-1][1]))
    names = _csv_classes(path, root, lines, classes, num_classes, strict=split == "train")
    present = [(p, y) for p, y in rows if p.is_file()]
    missing = [p for p, _ in rows if not p.is_file()]
    return VideoList(present, names, missing, "csv")


def load_folders(root: Path, split: str = "train", classes: Optional[List[str]] = None) -> VideoList:
    """Read ``{split}/<class>/<video>``; classes are the sorted folder names (or ``classes`` when given)."""
    root = Path(root)
    split_dir = _first_existing(root, _split_names(split))
    if split_dir is None or not split_dir.is_dir():
        raise MissingSplit(f"{root}: no {split}/ folder with one sub-folder per class")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    classes = list(classes) if classes else found
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for name in found:
        if name not in index:
            raise UserError(f"{split_dir / name}: class folder not among the {len(classes)} training classes")
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in VIDEO_EXTS)
        samples += [(p, index[name]) for p in files]
    if not samples:
        raise UserError(f"{split_dir}: no videos ({', '.join(VIDEO_EXTS)}) in class folders")
    return VideoList(samples, classes, [], "folders")


def _read_annotations(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"label", "youtube_id", "time_start", "time_end"}
        if not need <= set(reader.fieldnames or ()):
            raise UserError(f"{path}: header must contain {', '.join(sorted(need))}, got {reader.fieldnames}")
        return list(reader)


def _official_paths(root: Path, split: str) -> Tuple[Optional[Path], Optional[Path]]:
    """The annotation csv and the video folder of a split in the official layout."""
    names = _split_names(split)
    ann = _first_existing(root / "annotations", names, ".csv")
    if ann is None:
        flat = _first_existing(root, names, ".csv")
        ann = flat if flat is not None and _is_official_csv(flat) else None
    return ann, _first_existing(root, names)


def load_official(root: Path, split: str = "train") -> VideoList:
    """Read the official Kinetics annotations csv; videos may sit flat in the split folder or per class."""
    root = Path(root)
    ann, video_dir = _official_paths(root, split)
    if ann is None:
        raise MissingSplit(f"{root}: no annotations/{split}.csv (official Kinetics layout)")
    video_dir = video_dir or root
    rows = _read_annotations(ann)
    train_ann, _ = _official_paths(root, "train")
    label_rows = _read_annotations(train_ann) if train_ann is not None and train_ann != ann else rows
    classes = sorted({r["label"].strip() for r in label_rows})
    index = {c: i for i, c in enumerate(classes)}
    samples, missing = [], []
    for n, r in enumerate(rows, 2):  # line 1 is the header
        label = r["label"].strip()
        if label not in index:
            raise UserError(f"{ann}:{n}: label {label!r} is not among the {len(classes)} training classes "
                            f"(of {train_ann or ann})")
        name = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        path = _find_clip(video_dir, label, name)
        if path is None:
            missing.append(video_dir / f"{name}.mp4")
        else:
            samples.append((path, index[label]))
    return VideoList(samples, classes, missing, "official")


def _find_clip(video_dir: Path, label: str, name: str) -> Optional[Path]:
    for folder in (video_dir, video_dir / label, video_dir / label.replace(" ", "_")):
        for ext in VIDEO_EXTS:
            p = folder / f"{name}{ext}"
            if p.is_file():
                return p
    return None


def detect_kinetics_layout(root: Path, split: str = "train") -> str:
    """``csv``, ``official`` or ``folders``, whichever the data dir holds (in that order of preference)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data dir does not exist")
    flat = _first_existing(root, _split_names(split), ".csv")
    if flat is not None and flat.is_file() and not _is_official_csv(flat):
        return "csv"
    if _official_paths(root, split)[0] is not None:
        return "official"
    split_dir = _first_existing(root, _split_names(split))
    if split_dir is not None and split_dir.is_dir():
        return "folders"
    raise MissingSplit(f"{root}: no Kinetics layout found (expected {split}.csv, annotations/{split}.csv or "
                    f"{split}/<class>/ folders)")


def load_kinetics(root: Path, split: str = "train", layout: str = "auto", classes: Optional[Sequence[str]] = None,
                  num_classes: Optional[int] = None) -> VideoList:
    """Read a Kinetics split in any layout; ``layout="auto"`` detects it.

    ``classes`` (the training classes) and ``num_classes`` check the labels of a ``csv`` layout (see
    :func:`load_csv`); the other layouts name their classes and check them against the training split themselves.
    """
    if layout not in KINETICS_LAYOUTS:
        raise UserError(f"unknown Kinetics layout {layout!r}; use one of {', '.join(KINETICS_LAYOUTS)}")
    layout = detect_kinetics_layout(root, split) if layout == "auto" else layout
    if layout == "csv":
        vl = load_csv(root, split, classes=classes, num_classes=num_classes)
    elif layout == "official":
        vl = load_official(root, split)
    else:
        train_classes = load_folders(root, "train").classes if split != "train" else None
        vl = load_folders(root, split, train_classes)
    if vl.missing:
        _LOG.warning("%s: %d of %d listed videos are missing (skipped)", root, len(vl.missing),
                     len(vl.missing) + len(vl.samples))
    return vl


def _read_class_ind(class_ind: Path) -> List[str]:
    """UCF101 class names from ``classInd.txt`` (``index name`` lines, indices ``1..K``)."""
    pairs = []
    for n, line in enumerate(class_ind.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            pairs.append((int(parts[0]), parts[1]))
        except (IndexError, ValueError):
            raise UserError(f"{class_ind}:{n}: expected 'index name', got {line.strip()[:80]!r}") from None
    got = sorted(i for i, _ in pairs)
    if got != list(range(1, len(pairs) + 1)):
        raise UserError(f"{class_ind}: class indices must be 1..{len(pairs)}, each once; got {_ranges(got)}")
    return [name for _, name in sorted(pairs)]


def _ucf_label(parts: Sequence[str], index: Dict[str, int], list_file: Path, n: int, k: int) -> int:
    """The 0-based label of a split-list line: its 1-based label, else its class folder's."""
    rel = parts[0]
    try:
        label = int(parts[1]) - 1 if len(parts) > 1 else index[rel.split("/")[0]]
    except (KeyError, ValueError):
        raise UserError(f"{list_file}:{n}: cannot find the label of {rel!r} (no label and its folder is not a "
                        f"class of classInd.txt)") from None
    if not 0 <= label < k:
        raise UserError(f"{list_file}:{n}: label {parts[1]} is not a class: classInd.txt has classes 1..{k}")
    return label


def load_ucf101(root: Path, split: str = "train", fold: int = 1) -> VideoList:
    """Read UCF101 split ``fold`` (1-3) from ``UCF-101/`` and ``ucfTrainTestlist/``.

    Raises:
        UserError: Missing lists, a malformed ``classInd.txt`` line or a label outside it (``file:line``).
    """
    root = Path(root)
    if fold not in (1, 2, 3):
        raise UserError(f"UCF101 fold must be 1, 2 or 3, got {fold}")
    lists = root / "ucfTrainTestlist"
    video_dir = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    class_ind = lists / "classInd.txt"
    if not class_ind.is_file():
        raise UserError(f"{class_ind}: missing (UCF101 layout needs ucfTrainTestlist/classInd.txt)")
    classes = _read_class_ind(class_ind)
    index = {c: i for i, c in enumerate(classes)}
    list_file = lists / f"{'trainlist' if split == 'train' else 'testlist'}{fold:02d}.txt"
    if not list_file.is_file():
        raise MissingSplit(f"{list_file}: missing UCF101 split list")
    samples, missing = [], []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        label = _ucf_label(parts, index, list_file, n, len(classes))
        path = video_dir / parts[0]
        (samples.append((path, label)) if path.is_file() else missing.append(path))
    return VideoList(samples, classes, missing, "ucf101")


def load_dataset(data: str, root: Path, split: str = "train", classes: Optional[Sequence[str]] = None,
                 **data_args) -> VideoList:
    """Dispatch on the ``--data`` name: ``kinetics400`` (any layout), ``ucf101`` or ``csv``.

    Args:
        classes: The training classes, when loading another split for training (csv labels are checked
            against them; class-folder, official and UCF101 layouts check their own names).
        **data_args: ``layout``, ``fold``, ``{split}_csv``, ``num_classes``.
    """
    num_classes = data_args.get("num_classes")
    if data == "kinetics400":
        return load_kinetics(root, split, data_args.get("layout", "auto"), classes, num_classes)
    if data == "ucf101":
        return load_ucf101(root, split, int(data_args.get("fold", 1)))
    if data == "csv":
        return load_csv(root, split, data_args.get(f"{split}_csv"), classes, num_classes)
    raise UserError(f"unknown dataset {data!r}; use kinetics400, ucf101 or csv")

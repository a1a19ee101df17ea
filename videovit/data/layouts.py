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

__all__ = ["VideoList", "VIDEO_EXTS", "KINETICS_LAYOUTS", "load_kinetics", "load_csv", "load_folders",
           "load_official", "load_ucf101", "load_dataset", "detect_kinetics_layout"]

_LOG = logging.getLogger(__name__)
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
KINETICS_LAYOUTS = ("auto", "csv", "folders", "official")
# Split aliases: the official release says "validate", pytorchvideo and PySlowFast say "val".
_SPLIT_ALIASES = {"train": ("train",), "val": ("val", "validate", "valid"), "test": ("test",)}


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


def _read_class_names(root: Path, num_classes: int) -> List[str]:
    """Names from ``classids.json`` (``{name: id}``) or ``classes.txt``; ``"0".."K-1"`` otherwise."""
    ids, txt = root / "classids.json", root / "classes.txt"
    if ids.is_file():
        try:
            mapping = json.loads(ids.read_text())
            names = [n for n, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
        except (ValueError, AttributeError, TypeError) as e:
            raise UserError(f"{ids}: not a JSON object of class name -> id ({e})") from e
        if len(names) >= num_classes:
            return names
    if txt.is_file():
        names = [line.strip() for line in txt.read_text().splitlines() if line.strip()]
        if len(names) >= num_classes:
            return names
    return [str(i) for i in range(num_classes)]


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


def _is_official_csv(path: Path) -> bool:
    with open(path, newline="") as f:
        head = f.readline().strip().lower()
    return head.replace('"', "").startswith("label,youtube_id")


def load_csv(root: Path, split: str = "train", csv_path: Optional[Path] = None) -> VideoList:
    """Read a pytorchvideo / PySlowFast ``path label`` csv (space separated; comma also accepted)."""
    root = Path(root)
    path = Path(csv_path) if csv_path else _first_existing(root, _split_names(split), ".csv")
    if path is None or not path.is_file():
        raise UserError(f"{root}: no {split}.csv (pytorchvideo 'path label' list)")
    rows: List[Tuple[Path, int]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(" ", 1) if " " in line.strip() else line.strip().rsplit(",", 1)
        try:
            rows.append((_resolve(root, parts[0].strip()), int(parts[1])))
        except (IndexError, ValueError) as e:
            raise UserError(f"{path}:{n}: expected 'path label', got {line.strip()[:80]!r}") from e
    present = [(p, y) for p, y in rows if p.is_file()]
    missing = [p for p, _ in rows if not p.is_file()]
    classes = _read_class_names(root, max((y for _, y in rows), default=-1) + 1)
    return VideoList(present, classes, missing, "csv")


def load_folders(root: Path, split: str = "train", classes: Optional[List[str]] = None) -> VideoList:
    """Read ``{split}/<class>/<video>``; classes are the sorted folder names (or ``classes`` when given)."""
    root = Path(root)
    split_dir = _first_existing(root, _split_names(split))
    if split_dir is None or not split_dir.is_dir():
        raise UserError(f"{root}: no {split}/ folder with one sub-folder per class")
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
        raise UserError(f"{root}: no annotations/{split}.csv (official Kinetics layout)")
    video_dir = video_dir or root
    rows = _read_annotations(ann)
    train_ann, _ = _official_paths(root, "train")
    label_rows = _read_annotations(train_ann) if train_ann is not None and train_ann != ann else rows
    classes = sorted({r["label"].strip() for r in label_rows})
    index = {c: i for i, c in enumerate(classes)}
    samples, missing = [], []
    for r in rows:
        label = r["label"].strip()
        if label not in index:
            raise UserError(f"{ann}: label {label!r} is not among the {len(classes)} training classes")
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
    raise UserError(f"{root}: no Kinetics layout found (expected {split}.csv, annotations/{split}.csv or "
                    f"{split}/<class>/ folders)")


def load_kinetics(root: Path, split: str = "train", layout: str = "auto") -> VideoList:
    """Read a Kinetics split in any layout; ``layout="auto"`` detects it."""
    if layout not in KINETICS_LAYOUTS:
        raise UserError(f"unknown Kinetics layout {layout!r}; use one of {', '.join(KINETICS_LAYOUTS)}")
    layout = detect_kinetics_layout(root, split) if layout == "auto" else layout
    if layout == "csv":
        vl = load_csv(root, split)
    elif layout == "official":
        vl = load_official(root, split)
    else:
        train_classes = load_folders(root, "train").classes if split != "train" else None
        vl = load_folders(root, split, train_classes)
    if vl.missing:
        _LOG.warning("%s: %d of %d listed videos are missing (skipped)", root, len(vl.missing),
                     len(vl.missing) + len(vl.samples))
    return vl


def load_ucf101(root: Path, split: str = "train", fold: int = 1) -> VideoList:
    """Read UCF101 split ``fold`` (1-3) from ``UCF-101/`` and ``ucfTrainTestlist/``."""
    root = Path(root)
    if fold not in (1, 2, 3):
        raise UserError(f"UCF101 fold must be 1, 2 or 3, got {fold}")
    lists = root / "ucfTrainTestlist"
    video_dir = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    class_ind = lists / "classInd.txt"
    if not class_ind.is_file():
        raise UserError(f"{class_ind}: missing (UCF101 layout needs ucfTrainTestlist/classInd.txt)")
    pairs = [line.split() for line in class_ind.read_text().splitlines() if line.strip()]
    classes = [name for _, name in sorted(pairs, key=lambda p: int(p[0]))]
    index = {c: i for i, c in enumerate(classes)}
    list_file = lists / f"{'trainlist' if split == 'train' else 'testlist'}{fold:02d}.txt"
    if not list_file.is_file():
        raise UserError(f"{list_file}: missing UCF101 split list")
    samples, missing = [], []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        rel = parts[0]
        try:
            label = int(parts[1]) - 1 if len(parts) > 1 else index[rel.split("/")[0]]
        except (KeyError, ValueError) as e:
            raise UserError(f"{list_file}:{n}: cannot find the label of {rel!r}") from e
        path = video_dir / rel
        (samples.append((path, label)) if path.is_file() else missing.append(path))
    return VideoList(samples, classes, missing, "ucf101")


def load_dataset(data: str, root: Path, split: str = "train", **data_args) -> VideoList:
    """Dispatch on the ``--data`` name: ``kinetics400`` (any layout), ``ucf101`` or ``csv``."""
    if data == "kinetics400":
        return load_kinetics(root, split, data_args.get("layout", "auto"))
    if data == "ucf101":
        return load_ucf101(root, split, int(data_args.get("fold", 1)))
    if data == "csv":
        key = f"{split}_csv"
        return load_csv(root, split, data_args.get(key))
    raise UserError(f"unknown dataset {data!r}; use kinetics400, ucf101 or csv")

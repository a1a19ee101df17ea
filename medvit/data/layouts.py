"""On-disk dataset layouts: BTCV, TransUNet's Synapse mapping, decathlon datalists, NIfTI folders, 2D folders.

BTCV (Landman et al., "MICCAI Multi-Atlas Labeling Beyond the Cranial Vault", 2015) is distributed for UNETR
(Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", arXiv:2103.10504) as a decathlon
datalist ``dataset_0.json`` with ``imagesTr/img0001.nii.gz`` and ``labelsTr/label0001.nii.gz``. TransUNet
(Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation", arXiv:2102.04306)
uses 8 of the 13 organs ("Synapse"); :data:`SYNAPSE_FROM_BTCV` is the mapping used by the community
preprocessing script (unverified against the official npz files). MedT (Valanarasu et al., "Medical Transformer:
Gated Axial-Attention for Medical Image Segmentation", arXiv:2102.10662) reads 2D folders (``img/`` +
``labelcol/``), which :func:`folder2d_pairs` also accepts as ``images/`` + ``masks/``.

Every function returns lists of ``{"image": path, "label": path}`` dicts with absolute paths, and raises
``UserError`` naming the file when a datalist or an entry is missing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from engine.choices import check_choice
from engine.errors import UserError
from medvit.io import IMAGE2D_SUFFIXES

__all__ = [
    "BTCV_LABELS", "SYNAPSE_LABELS", "SYNAPSE_FROM_BTCV", "DATA_CHOICES", "load_datalist", "read_datalist_json",
    "datalist_problems", "entry_problem", "nifti_folder_pairs", "folder2d_pairs", "resolve_splits", "label_names",
    "remap_labels",
]

BTCV_LABELS: Tuple[str, ...] = (
    "background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
    "aorta", "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland",
    "left adrenal gland",
)
SYNAPSE_LABELS: Tuple[str, ...] = (
    "background", "spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas",
)
SYNAPSE_FROM_BTCV: Dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
DATA_CHOICES = ("btcv", "synapse", "decathlon", "folder", "folder2d", "nnunet")

_NIFTI = re.compile(r"\.nii(\.gz)?$")


def label_names(data: str, num_classes: Optional[int] = None) -> Tuple[str, ...]:
    """Class names for a dataset kind (``class 3`` style names when unknown)."""
    if data == "btcv":
        return BTCV_LABELS
    if data == "synapse":
        return SYNAPSE_LABELS
    n = num_classes or 2
    return ("background",) + tuple(f"class {i}" for i in range(1, n))


def remap_labels(label: np.ndarray, mapping: Dict[int, int]) -> np.ndarray:
    """Map label ids through ``mapping`` (ids not in it become 0), e.g. BTCV -> Synapse."""
    lut = np.zeros(max(256, int(label.max(initial=0)) + 1), dtype=np.int64)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[label.astype(np.int64)]


_SPLITS = ("training", "validation", "test")


def read_datalist_json(path: os.PathLike) -> dict:
    """The parsed datalist; ``UserError`` naming the file when it is missing, not JSON or not a JSON object."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: datalist not found")
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError (a binary file) is a ValueError
        raise UserError(f"{p}: unreadable datalist ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{p}: expected a JSON object with a \"training\" list, got a JSON {_json_kind(meta)}")
    return meta


def entry_problem(entry: object, split: str) -> Optional[str]:
    """What is wrong with one datalist entry, or ``None``.

    ``training``/``validation`` entries are ``{"image": path, "label": path}`` objects; ``test`` entries may
    also be bare path strings (and need no label).
    """
    if isinstance(entry, str) and split == "test":
        return None
    if isinstance(entry, str):
        return f'missing "label" (a bare path {entry!r}; expected {{"image": ..., "label": ...}})'
    if not isinstance(entry, dict):
        return f'expected an object with "image" and "label", got a JSON {_json_kind(entry)} {entry!r:.40}'
    keys = ("image", "label") if split != "test" else ("image",)
    for key in keys:
        if key not in entry:
            return f'missing "{key}"'
    for key in ("image", "label"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            return f'"{key}" must be a file path, got {entry[key]!r:.40}'
    return None


def datalist_problems(meta: dict, splits: Tuple[str, ...] = _SPLITS) -> List[Tuple[str, str]]:
    """Every schema problem of a parsed datalist as ``(where, problem)``, e.g. ``("training[3]", 'missing
    "label"')``; an absent or empty ``training`` list is one."""
    out: List[Tuple[str, str]] = []
    for split in splits:
        if split not in meta:
            continue
        entries = meta[split]
        if not isinstance(entries, list):
            out.append((split, f"expected a list of entries, got a JSON {_json_kind(entries)}"))
            continue
        out += [(f"{split}[{i}]", err) for i, e in enumerate(entries) if (err := entry_problem(e, split))]
    if not meta.get("training"):
        out.append(("training", "missing or empty list"))
    return out


def load_datalist(path: os.PathLike, split: str = "training", base_dir: Optional[os.PathLike] = None,
                  check_files: bool = True) -> List[dict]:
    """Read a decathlon datalist (``dataset_0.json``) and return the ``split`` entries with absolute paths.

    Args:
        path: The JSON datalist.
        split: ``training``, ``validation`` or ``test``.
        base_dir: Folder the entries are relative to (default: the JSON's folder).
        check_files: Raise ``UserError`` naming the first missing file.

    Raises:
        UserError: naming the file and the entry: ``dataset_0.json: training[3]: missing "label"``.
    """
    p = Path(path)
    meta = read_datalist_json(p)
    if split not in meta:
        raise UserError(f"{p}: no \"{split}\" list (keys: {', '.join(sorted(map(str, meta)))})")
    for where, err in datalist_problems({split: meta[split]}, (split,)):
        if where != "training" or split == "training":
            raise UserError(f"{p}: {where}: {err}")
    base = Path(base_dir) if base_dir is not None else p.parent
    out = []
    for i, entry in enumerate(meta[split]):
        entry = {"image": entry} if isinstance(entry, str) else dict(entry)
        for key in ("image", "label"):
            if key in entry:
                entry[key] = str((base / entry[key]).resolve())
                if check_files and not Path(entry[key]).is_file():
                    raise UserError(f"{entry[key]}: file listed in {p.name} ({split}[{i}].{key}) is missing")
        out.append(entry)
    return out


def _json_kind(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def nifti_folder_pairs(data_dir: os.PathLike) -> List[dict]:
    """Pair ``images*/`` and ``labels*/`` NIfTI files by case id (``img0001`` <-> ``label0001``, or equal names)."""
    root = Path(data_dir)
    img_dir = _first_dir(root, ("imagesTr", "images", "img", "image"))
    lab_dir = _first_dir(root, ("labelsTr", "labels", "label", "masks"))
    if img_dir is None or lab_dir is None:
        raise UserError(f"{root}: expected imagesTr/ and labelsTr/ (or images/ and labels/) folders")
    labels = {_case_key(f.name): f for f in lab_dir.iterdir() if _NIFTI.search(f.name)}
    pairs = []
    for f in sorted(img_dir.iterdir()):
        if not _NIFTI.search(f.name) or f.name.startswith("."):
            continue
        lab = labels.get(_case_key(f.name))
        if lab is None:
            raise UserError(f"{f}: no matching label in {lab_dir}")
        pairs.append({"image": str(f.resolve()), "label": str(lab.resolve())})
    if not pairs:
        raise UserError(f"{img_dir}: no .nii/.nii.gz images")
    return pairs


def folder2d_pairs(folder: os.PathLike) -> List[dict]:
    """Pair 2D images (``img/`` or ``images/``) with masks (``labelcol/``, ``masks/`` or ``labels/``) by stem."""
    root = Path(folder)
    img_dir = _first_dir(root, ("img", "images", "image"))
    mask_dir = _first_dir(root, ("labelcol", "masks", "mask", "labels"))
    if img_dir is None or mask_dir is None:
        raise UserError(f"{root}: expected img/ (or images/) and labelcol/ (or masks/) folders")
    masks = {}
    for f in mask_dir.iterdir():
        if f.suffix.lower() in IMAGE2D_SUFFIXES:
            masks[_mask_key(f.stem)] = f
    pairs = []
    for f in sorted(img_dir.iterdir()):
        if f.suffix.lower() not in IMAGE2D_SUFFIXES:
            continue
        m = masks.get(_mask_key(f.stem))
        if m is None:
            raise UserError(f"{f}: no matching mask in {mask_dir}")
        pairs.append({"image": str(f.resolve()), "label": str(m.resolve())})
    if not pairs:
        raise UserError(f"{img_dir}: no PNG/BMP/TIF images")
    return pairs


def resolve_splits(data: str, data_dir: os.PathLike, val_fraction: float = 0.2) -> Tuple[List[dict], List[dict]]:
    """Training and validation lists for ``--data`` kind ``data`` under ``data_dir``.

    ``btcv``/``synapse``/``decathlon`` read ``dataset_0.json`` (or the single ``*.json`` in the folder) and use
    its ``training``/``validation`` lists; ``folder`` pairs NIfTI files; ``folder2d`` uses ``train/`` and
    ``val/`` (or ``test/``) subfolders when present. Without a validation list the last ``val_fraction`` of the
    sorted cases is held out.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{root}: data directory not found")
    check_choice("--data", data, DATA_CHOICES, what="dataset kind")
    if data == "folder2d":
        sub = {d.name: d for d in root.iterdir() if d.is_dir()}
        val_dir = sub.get("val") or sub.get("validation") or sub.get("test")
        if "train" in sub and val_dir is not None:
            return folder2d_pairs(sub["train"]), folder2d_pairs(val_dir)
        return _hold_out(folder2d_pairs(sub.get("train", root)), val_fraction)
    if data == "folder":
        return _hold_out(nifti_folder_pairs(root), val_fraction)
    if data == "nnunet":  # nnU-Net v2 raw layout (medvit/data/nnunet.py)
        from medvit.data.nnunet import nnunet_splits

        return nnunet_splits(root, val_fraction)
    js = _find_datalist(root)
    train = load_datalist(js, "training")
    meta = read_datalist_json(js)
    if meta.get("validation"):
        return train, load_datalist(js, "validation")
    return _hold_out(train, val_fraction)


def _find_datalist(root: Path) -> Path:
    if (root / "dataset_0.json").is_file():
        return root / "dataset_0.json"
    cands = sorted(root.glob("*.json"))
    if len(cands) == 1:
        return cands[0]
    raise UserError(f"{root}: no dataset_0.json datalist (found {len(cands)} .json files)")


def _hold_out(items: List[dict], fraction: float) -> Tuple[List[dict], List[dict]]:
    if len(items) < 2:
        return items, items
    n_val = max(1, int(round(len(items) * fraction)))
    return items[:-n_val], items[-n_val:]


def _first_dir(root: Path, names: Tuple[str, ...]) -> Optional[Path]:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _case_key(name: str) -> str:
    stem = _NIFTI.sub("", name)
    digits = re.findall(r"\d+", stem)
    return digits[-1].lstrip("0") or "0" if digits else stem


def _mask_key(stem: str) -> str:
    return re.sub(r"(_anno|_mask|_label|_seg)$", "", stem)

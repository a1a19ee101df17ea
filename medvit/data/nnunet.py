"""nnU-Net v2 raw datasets as ``--data nnunet``.

The layout (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18, 2021; ``documentation/dataset_format.md`` of nnU-Net v2)::

    Dataset004_Hippocampus/
        dataset.json      {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "anterior": 1, ...},
                           "numTraining": 260, "file_ending": ".nii.gz"}
        imagesTr/hippocampus_001_0000.nii.gz     one file per channel: CASE_XXXX + file_ending
        labelsTr/hippocampus_001.nii.gz          CASE + file_ending
        imagesTs/hippocampus_002_0000.nii.gz     optional, unlabelled

``labels`` maps names to consecutive integer values starting at 0 (region-based training, where a value is a
list, is not supported). vtk models read one channel, so a dataset with several ``channel_names`` is refused with
a message that lists them. Every item carries its ``case`` identifier (the folds of :mod:`medvit.data.folds`
split by it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List, Tuple

from engine.errors import UserError

__all__ = ["read_dataset_json", "nnunet_items", "nnunet_splits", "nnunet_label_names", "nnunet_modality",
           "is_nnunet_dir"]

_REQUIRED = ("channel_names", "labels", "numTraining", "file_ending")


def is_nnunet_dir(root: os.PathLike) -> bool:
    """A folder with an nnU-Net v2 ``dataset.json`` (it has ``channel_names`` and ``file_ending``)."""
    js = Path(root) / "dataset.json"
    if not js.is_file():
        return False
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "channel_names" in meta and "file_ending" in meta


def read_dataset_json(root: os.PathLike) -> dict:
    """The validated ``dataset.json`` of an nnU-Net v2 raw dataset folder.

    Raises:
        UserError: Missing/unreadable file, a missing key, region-based or non-consecutive labels, several channels.
    """
    js = Path(root) / "dataset.json"
    if not js.is_file():
        raise UserError(f"{js}: not found (an nnU-Net v2 raw dataset has DatasetXXX_Name/dataset.json)")
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{js}: unreadable ({' '.join(str(e).split())})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{js}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise UserError(f"{js}: missing {', '.join(missing)} (nnU-Net v2 needs {', '.join(_REQUIRED)})")
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or not channels:
        raise UserError(f"{js}: channel_names must be an object like {{\"0\": \"CT\"}}")
    if len(channels) != 1:
        listed = ", ".join(f"{k}={v}" for k, v in sorted(channels.items()))
        raise UserError(f"{js}: {len(channels)} channels ({listed}); vtk models read one channel")
    _label_values(meta["labels"], js)
    return meta


def _label_values(labels, js: Path) -> Dict[int, str]:
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"{js}: labels must be an object like {{\"background\": 0, \"liver\": 1}}")
    out: Dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise UserError(f"{js}: label {name!r} is region-based ({value}); vtk trains plain labels only")
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{js}: label {name!r} has value {value!r}; expected an integer")
        if value in out:
            raise UserError(f"{js}: labels {out[value]!r} and {name!r} share the value {value}")
        out[value] = str(name)
    if sorted(out) != list(range(len(out))):
        raise UserError(f"{js}: label values {sorted(out)} must be consecutive from 0 (background)")
    return out


def nnunet_label_names(root: os.PathLike) -> List[str]:
    """Class names ordered by label value (background first)."""
    meta = read_dataset_json(root)
    values = _label_values(meta["labels"], Path(root) / "dataset.json")
    return [values[i] for i in range(len(values))]


def nnunet_modality(root: os.PathLike) -> str:
    """The one channel's name (``CT``, ``MRI``, ``T2``, ...), which picks the ``auto`` normalisation."""
    return str(next(iter(read_dataset_json(root)["channel_names"].values())))


def nnunet_items(root: os.PathLike, split: str = "training") -> List[dict]:
    """``{"image", "label", "case"}`` (``training``: imagesTr + labelsTr) or ``{"image", "case"}`` (``test``:
    imagesTs) with absolute paths, sorted by case.

    Raises:
        UserError: A missing folder, an image without its label (or the reverse), a file that is not
            ``CASE_0000`` + ``file_ending``, or a ``numTraining`` that disagrees with the files.
    """
    root = Path(root)
    meta = read_dataset_json(root)
    ending = str(meta["file_ending"])
    img_dir = root / ("imagesTr" if split == "training" else "imagesTs")
    if not img_dir.is_dir():
        if split != "training":
            return []
        raise UserError(f"{img_dir}: folder not found (nnU-Net v2 layout)")
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
    cases: Dict[str, Path] = {}
    for f in sorted(img_dir.iterdir()):
        if f.name.startswith(".") or not f.name.endswith(ending):
            continue
        m = pattern.match(f.name)
        if m is None:
            raise UserError(f"{f}: not named CASE_XXXX{ending} (nnU-Net channel suffix, e.g. case_0000{ending})")
        if int(m["channel"]) != 0:
            raise UserError(f"{f}: channel {m['channel']} but dataset.json lists one channel (0000)")
        cases[m["case"]] = f
    if not cases:
        raise UserError(f"{img_dir}: no CASE_0000{ending} images")
    if split != "training":
        return [{"image": str(f.resolve()), "case": c} for c, f in sorted(cases.items())]
    return _with_labels(root, cases, ending, meta)


def _with_labels(root: Path, cases: Dict[str, Path], ending: str, meta: dict) -> List[dict]:
    lab_dir = root / "labelsTr"
    if not lab_dir.is_dir():
        raise UserError(f"{lab_dir}: folder not found (nnU-Net v2 layout)")
    labels = {f.name[: -len(ending)]: f for f in lab_dir.iterdir()
              if f.name.endswith(ending) and not f.name.startswith(".")}
    extra = sorted(set(labels) - set(cases))
    if extra:
        raise UserError(f"{labels[extra[0]]}: label without an image {extra[0]}_0000{ending} in imagesTr")
    items = []
    for case, img in sorted(cases.items()):
        lab = labels.get(case)
        if lab is None:
            raise UserError(f"{img}: no label {case}{ending} in {lab_dir}")
        items.append({"image": str(img.resolve()), "label": str(lab.resolve()), "case": case})
    n = meta["numTraining"]
    if not isinstance(n, int) or n != len(items):
        raise UserError(f"{root / 'dataset.json'}: numTraining is {n!r} but imagesTr/labelsTr hold {len(items)} cases")
    return items


def nnunet_splits(root: os.PathLike, val_fraction: float = 0.2) -> Tuple[List[dict], List[dict]]:
    """Training and validation items: the last ``val_fraction`` of the sorted cases is held out (use
    ``--folds K --fold F`` for nnU-Net's cross-validation split)."""
    items = nnunet_items(root, "training")
    if len(items) < 2:
        return items, items
    n_val = max(1, int(round(len(items) * val_fraction)))
    return items[:-n_val], items[-n_val:]


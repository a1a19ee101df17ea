"""Class-name lists of the released video checkpoints, in the index order their classifiers use.

* ``kinetics400.txt``: the 400 Kinetics-400 classes (Kay et al., arXiv:1705.06950) in alphabetical order, the order
  of the official label csv and of pytorchvideo's / PySlowFast's ``kinetics_classnames.json`` (``abseiling`` = 0 ...
  ``zumba`` = 399), which every released K400 model (TimeSformer, ViViT, MViT, VTN, STAM) was trained with.
* ``ucf101.txt``: the 101 UCF101 classes (Soomro et al., arXiv:1212.0402) in ``classInd.txt`` order
  (``ApplyEyeMakeup`` = 0 ... ``YoYo`` = 100).

:func:`match_classes` maps a dataset's class names onto a model's by name (case, ``_`` / space and quotes
ignored), so a K400 model evaluates a dataset that holds only some of its classes.

Example::

    >>> names = class_list("kinetics400")
    >>> names[0], names[-1], len(names)
    ('abseiling', 'zumba', 400)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence

from engine.errors import UserError

__all__ = ["CLASS_LISTS", "class_list", "class_list_for", "read_class_names", "normalise_name", "match_classes"]

CLASS_LISTS = {"kinetics400": 400, "ucf101": 101}
_HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _read(name: str) -> tuple:
    return tuple(line.strip() for line in (_HERE / f"{name}.txt").read_text(encoding="utf-8").splitlines()
                 if line.strip())


def class_list(name: str) -> List[str]:
    """The shipped list ``name`` (``kinetics400`` or ``ucf101``)."""
    if name not in CLASS_LISTS:
        raise ValueError(f"unknown class list {name!r}; shipped: {', '.join(CLASS_LISTS)}")
    return list(_read(name))


def class_list_for(num_classes: int, data: Optional[str] = None) -> Optional[List[str]]:
    """The shipped list with ``num_classes`` names (``data`` first when it names one), else ``None``."""
    if data in CLASS_LISTS and CLASS_LISTS[data] == num_classes:
        return class_list(data)
    for name, n in CLASS_LISTS.items():
        if n == num_classes:
            return class_list(name)
    return None


def read_class_names(spec: str) -> List[str]:
    """``--classes``: a shipped list name, a text file with one name per line, or comma-separated names."""
    if spec in CLASS_LISTS:
        return class_list(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise UserError(f"--classes {path}: the file names no class")
        return names
    if "," in spec:
        return [n.strip() for n in spec.split(",") if n.strip()]
    raise UserError(f"--classes {spec}: not {', '.join(CLASS_LISTS)}, a file of names or a comma-separated list")


def normalise_name(name: str) -> str:
    """Name comparison key: case, quotes, ``_`` versus space and repeated blanks do not matter."""
    return " ".join(str(name).replace("_", " ").strip().strip("\"'").lower().split())


def _placeholders(names: Sequence[str]) -> bool:
    return list(names) == [str(i) for i in range(len(names))]


def match_classes(model_classes: Sequence[str], data_classes: Sequence[str], where: str = "the dataset"
                  ) -> Optional[List[int]]:
    """Model output index of each dataset class, or ``None`` when the dataset uses the model's indices as they are.

    Args:
        model_classes: The model's class names in output order (``"0".."K-1"`` when unknown).
        data_classes: The dataset's class names in label order.
        where: Names the dataset in the error message (its folder).

    Raises:
        UserError: Some dataset classes are not among the model's (one line naming a few of them).
    """
    model_classes, data_classes = list(model_classes), list(data_classes)
    if not model_classes or data_classes == model_classes:
        return None
    if _placeholders(model_classes) and len(data_classes) == len(model_classes):
        return None  # a model without names: the dataset's label order is taken as the model's
    index = {normalise_name(c): i for i, c in enumerate(model_classes)}
    cols = [index.get(normalise_name(c)) for c in data_classes]
    missing = [c for c, i in zip(data_classes, cols) if i is None]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserError(f"{where}: {len(missing)} of its {len(data_classes)} classes ({shown}) are not classes of "
                        f"the model ({len(model_classes)} classes: {', '.join(model_classes[:3])}, ...); "
                        "cannot map them by name")
    return None if cols == list(range(len(model_classes))) else cols

"""Segmentation recipes: the papers' optimiser settings per model and the defaults a run's config is filled with.

Optimiser recipes follow the papers: UNETR (Hatamizadeh et al., arXiv:2103.10504) and Swin-UNETR (Hatamizadeh et
al., arXiv:2201.01740): AdamW 1e-4, weight decay 1e-5, warmup-cosine, one 96^3 volume per step; TransUNet (Chen et
al., arXiv:2102.04306): SGD 0.01, momentum 0.9, weight decay 1e-4, poly, 24 slices of 224 x 224; MedT (Valanarasu
et al., arXiv:2102.10662): Adam 1e-3 (AdamW here), weight decay 1e-5, 4 images of 128 x 128.

Model facts (2D or 3D, default ROI, CT window, spacing) come from the registry metadata
(``medvit.registry.metadata(name)``: ``spatial_dims``, ``input_size``, ``protocol``), never from building the
model. Dataset facts (number of classes, class names, channels of a 2D folder) come from the dataset kind or
its files.

Example::

    >>> given = with_recipe_defaults("transunet", {"max_steps": 200, "lr": None})
    >>> given["optimizer"], given["lr"], given["batch_size"]
    ('sgd', 0.01, 24)
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple

from engine.errors import UserError
from engine.pretrained import record_pretrained

__all__ = [
    "PAPER_RECIPES", "DEFAULT_RECIPE", "DATASET_NUM_CLASSES", "DEFAULT_EDGE", "WINDOW_2D", "recipe_defaults",
    "with_recipe_defaults", "model_metadata", "spatial_dims", "default_edge", "default_window", "default_spacing",
    "default_num_classes", "datalist_names", "default_class_names", "folder2d_channels", "resolve_seg_config",
    "DATA_ARG_KEYS", "check_data_args", "check_model_args", "model_keywords", "per_world_batch",
]

_VOLUME_RECIPE = dict(optimizer="adamw", lr=1e-4, weight_decay=1e-5, schedule="warmup-cosine", batch_size=1)
PAPER_RECIPES: Dict[str, Dict[str, Any]] = {
    "unetr": _VOLUME_RECIPE,
    "swin_unetr": _VOLUME_RECIPE,
    "transunet": dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="poly", batch_size=24),
    "medt": dict(optimizer="adamw", lr=1e-3, weight_decay=1e-5, schedule="constant", batch_size=4),
}
DEFAULT_RECIPE = "unetr"  # models without a paper recipe train with UNETR's
_WARMUP_RECIPES = ("unetr", "swin_unetr")  # warmup = 1% of the steps
DATASET_NUM_CLASSES = {"btcv": 14, "synapse": 9, "folder2d": 2}  # including background
DEFAULT_EDGE = 96  # ROI edge of a model whose metadata gives no input size
WINDOW_2D = (-125.0, 275.0)  # TransUNet's Synapse CT window, for 2D models whose protocol gives none
_DATALIST = "dataset_0.json"


def _recipe_key(model: str) -> str:
    import medvit

    name = medvit.registry.resolve(model)
    return name if name in PAPER_RECIPES else DEFAULT_RECIPE


def recipe_defaults(model: Optional[str], max_steps: Optional[int]) -> Dict[str, Any]:
    """Optimiser/schedule/batch defaults of the model's paper recipe (see the module docstring).

    Args:
        model: ``--model`` (a name or alias); ``None`` gives no defaults.
        max_steps: ``--max-steps`` if given (the 3D recipes warm up for 1% of the steps, of 1000 by default).
    """
    if model is None:
        return {}
    key = _recipe_key(model)
    out = dict(PAPER_RECIPES[key], val_every=100, ckpt_every=100)
    out["batch_size"] = per_world_batch(out["batch_size"])
    if key in _WARMUP_RECIPES:
        out["warmup_steps"] = max(0, (max_steps or 1000) // 100)
    return out


def per_world_batch(batch_size: int) -> int:
    """The recipe's global batch rounded up to a multiple of torchrun's ``WORLD_SIZE``: UNETR's one volume per step
    becomes one volume per rank, so ``torchrun --nproc_per_node N vtk seg train ...`` works without
    ``--batch-size`` (an explicit ``--batch-size`` is the global batch and is never changed)."""
    try:
        world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        world = 1
    return -(-int(batch_size) // world) * world


def with_recipe_defaults(model: Optional[str], given: Mapping[str, Any]) -> Dict[str, Any]:
    """``given`` CLI options (``None`` = not given) over the recipe defaults: explicit options win.

    This runs at option-parsing time, not in :meth:`medvit.task.SegTask.resolve_config`: once a
    :class:`~engine.config.TrainConfig` exists, a default ``lr`` cannot be told from an explicit one.
    """
    explicit = {k: v for k, v in given.items() if v is not None}
    return {**recipe_defaults(model, explicit.get("max_steps")), **explicit}


def model_metadata(model: str) -> Dict[str, Any]:
    """The registry metadata of a medvit model; an unknown name is a ``UserError`` naming ``--model``."""
    import medvit

    try:
        return medvit.registry.metadata(model)
    except ValueError as e:
        raise UserError(f"--model {model}: {e}") from None


def spatial_dims(meta: Mapping[str, Any], fallback: Optional[int] = None) -> int:
    """2 or 3: the metadata's ``spatial_dims``, else ``len(input_size) - 1``, else ``fallback`` (else 3)."""
    if meta.get("spatial_dims") is not None:
        return int(meta["spatial_dims"])
    if meta.get("input_size") is not None:
        return len(meta["input_size"]) - 1  # (C, H, W) or (C, D, H, W)
    return int(fallback) if fallback is not None else 3


def default_edge(meta: Mapping[str, Any]) -> int:
    """ROI / slice edge: the protocol ``roi``, else the ``input_size``, else :data:`DEFAULT_EDGE`."""
    roi = (meta.get("protocol") or {}).get("roi")
    if roi:
        return int(roi[0])
    size = meta.get("input_size")
    return int(size[1]) if size else DEFAULT_EDGE


def default_window(meta: Mapping[str, Any], dims: int) -> Tuple[float, float]:
    """CT intensity window ``(a_min, a_max)``: the protocol's, else the UNETR recipe (3D) or TransUNet's (2D)."""
    from medvit.data.transforms import RECIPE_3D

    proto = meta.get("protocol") or {}
    fallback = (RECIPE_3D["a_min"], RECIPE_3D["a_max"]) if dims == 3 else WINDOW_2D
    return float(proto.get("a_min", fallback[0])), float(proto.get("a_max", fallback[1]))


def default_spacing(meta: Mapping[str, Any]) -> List[float]:
    """Training voxel spacing (mm) of a 3D model: the protocol's, else the UNETR recipe's (1.5, 1.5, 2.0)."""
    from medvit.data.transforms import RECIPE_3D

    return [float(s) for s in (meta.get("protocol") or {}).get("spacing", RECIPE_3D["spacing"])]


def _read_datalist(data_dir: str) -> Optional[dict]:
    js = Path(data_dir) / _DATALIST
    if not js.is_file():
        return None
    try:
        meta = json.loads(js.read_text())
    except ValueError:
        raise UserError(f"{js}: unreadable datalist") from None
    if not isinstance(meta, dict):
        raise UserError(f"{js}: expected a JSON object with 'training' and 'labels'")
    return meta


def default_num_classes(data: str, data_dir: str) -> int:
    """Classes including background: fixed for btcv/synapse/folder2d, else the datalist's ``labels`` (min 2)."""
    if data in DATASET_NUM_CLASSES:
        return DATASET_NUM_CLASSES[data]
    if data == "nnunet":  # dataset.json labels (medvit/data/nnunet.py)
        return len(_nnunet_names(data_dir))
    meta = _read_datalist(data_dir)
    if meta is None:
        raise UserError(f"{data_dir}: no {_DATALIST} with 'labels'; pass --num-classes")
    return len(meta.get("labels", {})) or 2


def datalist_names(data_dir: str, num_classes: int) -> Optional[List[str]]:
    """Class names from a decathlon datalist's ``labels`` when it names every class, else ``None``."""
    try:
        meta = _read_datalist(data_dir)
    except UserError:
        return None
    labels = (meta or {}).get("labels", {})
    names = [labels.get(str(i)) for i in range(num_classes)]
    return None if None in names else [str(n) for n in names]


def default_class_names(data: str, data_dir: str, num_classes: int) -> List[str]:
    """Class names, background first: the datalist's (decathlon, folder), else the dataset kind's."""
    from medvit.data.layouts import label_names

    if data == "nnunet":
        return _nnunet_names(data_dir)
    from_json = datalist_names(data_dir, num_classes) if data in ("decathlon", "folder") else None
    return from_json or list(label_names(data, num_classes))


def _nnunet_names(data_dir: str) -> List[str]:
    from medvit.data.nnunet import nnunet_label_names

    return nnunet_label_names(data_dir)


def folder2d_channels(data_dir: str) -> int:
    """Channels of the first training image of a 2D folder (1 grey, 3 RGB)."""
    from medvit.data.layouts import resolve_splits
    from medvit.io import read_image2d

    train_items, _ = resolve_splits("folder2d", data_dir)
    return int(read_image2d(train_items[0]["image"]).shape[0])


# Every ``--data-arg`` key the seg pipeline reads (medvit.task, medvit.data.transforms, medvit.inference); a key
# not listed is refused with this list. A new data option adds its key here.
DATA_ARG_KEYS: Tuple[str, ...] = (
    "roi", "spacing", "a_min", "a_max", "num_samples", "cache", "spatial_dims", "sw_batch_size", "overlap", "names",
    "crop", "ratios", "pos", "neg", "flip_prob", "rot90_prob", "shift_prob", "class_weights", "dice_batch",
    "val_fraction", "folds", "fold", "normalization", "intensity_stats",
    "affine_prob", "rotate", "scale", "translate", "noise_prob", "blur_prob", "contrast_prob", "gamma_prob",
)
_DATA_ARG_OPTIONS = {"roi": "--img-size", "num_samples": "--num-samples", "cache": "--cache"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _arg(key: str, value: Any) -> str:
    """``--data-arg spacing=[-1, 1, 1]`` (or ``--num-samples 0`` for keys with their own option)."""
    if key in _DATA_ARG_OPTIONS:
        return f"{_DATA_ARG_OPTIONS[key]} {value}"
    return f"--data-arg {key}={value}"


def _data_arg_rule(key: str, v: Any) -> Optional[str]:
    """What is wrong with one data option's value (``None`` when it is fine or has no rule)."""
    if key == "spacing":
        ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_number(x) and x > 0 for x in v)
        return None if ok else "expected 3 positive numbers in mm, e.g. spacing=[1.5,1.5,2.0]"
    if key == "roi":
        edges = list(v) if isinstance(v, (list, tuple)) else [v]
        ok = 1 <= len(edges) <= 3 and all(_is_int(x) and x >= 1 for x in edges)
        return None if ok else "expected a positive integer edge or a list of 2-3 of them, e.g. roi=96"
    if key in ("num_samples", "sw_batch_size"):
        return None if _is_int(v) and v >= 1 else "expected an integer >= 1"
    if key in ("a_min", "a_max", "pos", "neg"):
        return None if _is_number(v) and (key.startswith("a_") or v >= 0) else "expected a finite number" + (
            "" if key.startswith("a_") else " >= 0")
    if key in ("flip_prob", "rot90_prob", "shift_prob", "affine_prob", "noise_prob", "blur_prob", "contrast_prob",
               "gamma_prob"):
        return None if _is_number(v) and 0 <= v <= 1 else "expected a probability in [0, 1]"
    if key == "rotate":
        return None if _is_number(v) and 0 <= v <= 180 else "expected degrees in [0, 180]"
    if key == "scale":
        return None if _is_number(v) and 0 <= v < 1 else "expected a fraction in [0, 1), e.g. scale=0.15"
    if key == "translate":
        return None if _is_number(v) and v >= 0 else "expected voxels >= 0"
    if key == "overlap":
        return None if _is_number(v) and 0 <= v < 1 else "expected a number in [0, 1)"
    if key == "val_fraction":
        return None if _is_number(v) and 0 < v < 1 else "expected a fraction in (0, 1)"
    if key in ("cache", "dice_batch"):
        return None if isinstance(v, bool) else "expected true or false"
    if key == "spatial_dims":
        return None if v in (2, 3) and not isinstance(v, bool) else "expected 2 or 3"
    if key in ("class_weights", "ratios"):
        ok = v is None or (isinstance(v, (list, tuple)) and v and all(_is_number(x) and x >= 0 for x in v))
        return None if ok else "expected a list of numbers >= 0, one per class"
    if key == "names":
        ok = isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
        return None if ok else "expected a list of class names"
    if key in ("folds", "fold"):  # the pair's relation is checked by medvit.task.resolve_training_options
        return None if _is_int(v) and v >= (2 if key == "folds" else 0) else (
            "expected an integer >= 2" if key == "folds" else "expected an integer >= 0")
    if key == "intensity_stats":
        return None if isinstance(v, Mapping) else "expected the CT scheme's statistics (a mapping)"
    return None


def check_data_args(data_args: Mapping[str, Any]) -> None:
    """Refuse unknown ``--data-arg`` keys (listing :data:`DATA_ARG_KEYS`) and values that break their rule.

    Raises:
        UserError: ``--data-arg: 'bogus' is not a known key, i.e. one of a_max, a_min, ...`` or
            ``--data-arg spacing=['a', 'b']: expected 3 positive numbers in mm, ...``.
    """
    from engine.choices import check_keys

    check_keys("--data-arg", list(data_args), DATA_ARG_KEYS)
    for key, value in data_args.items():
        problem = _data_arg_rule(key, value)
        if problem:
            raise UserError(f"{_arg(key, value)}: {problem}")
    a_min, a_max = data_args.get("a_min"), data_args.get("a_max")
    if _is_number(a_min) and _is_number(a_max) and a_max <= a_min:
        raise UserError(f"--data-arg a_min={a_min} / a_max={a_max}: the intensity window must be increasing")


def model_keywords(model: str) -> Optional[FrozenSet[str]]:
    """The ``--model-arg`` keys ``model`` accepts: its class's constructor arguments (read from a registry
    ``tiny`` instance, so no full-size model is built), or ``None`` when the constructor takes ``**kwargs``."""
    import medvit

    name = medvit.registry.resolve(model)
    return _keywords_of(medvit.registry.entrypoint(name), name)


@functools.lru_cache(maxsize=None)
def _keywords_of(entry: Any, name: str) -> Optional[FrozenSet[str]]:  # cached per entry-point function
    import medvit
    from engine.choices import accepted_keywords

    try:
        net = medvit.create_model(name, **medvit.registry.tiny_overrides(name))
    except Exception:  # noqa: BLE001 - an entry whose tiny build fails is checked by building it for real
        return None
    keys = accepted_keywords(type(net).__init__, exclude=("self",))
    return None if keys is None else frozenset(keys)


def check_model_args(model: str, model_args: Mapping[str, Any]) -> None:
    """Refuse ``--model-arg`` keys the model's constructor does not take, listing the ones it does."""
    from engine.choices import check_keys
    from engine.pretrained import model_overrides

    model_metadata(model)  # an unknown --model first
    keys = model_keywords(model)
    if keys is not None:
        check_keys("--model-arg", list(model_overrides(model_args)), keys)


def _edge_of(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def resolve_seg_config(cfg):
    """Fill the ``model_args``/``data_args`` defaults that depend on the model and the data; idempotent.

    Sets ``num_classes``, ``img_size`` and ``in_chans`` (kept when given) and ``spatial_dims`` and ``roi``
    (always, from the model), ``a_min``/``a_max``, ``spacing``/``num_samples`` (3D) and ``names`` (kept when
    given). Returns a validated copy; ``cfg`` is not modified.

    Raises:
        UserError: No ``data``/``data_dir``, an unknown ``--data`` kind or ``--model``, an unreadable datalist.
    """
    import copy

    from engine.choices import check_choice
    from medvit.data.layouts import DATA_CHOICES
    from medvit.data.transforms import RECIPE_3D

    if not cfg.data or not cfg.data_dir:
        raise UserError("--data and --data-dir are required (or --config FILE / --resume RUN)")
    check_choice("--data", cfg.data, DATA_CHOICES)
    meta = model_metadata(cfg.model)
    check_model_args(cfg.model, cfg.model_args)
    check_data_args(cfg.data_args)
    cfg = copy.copy(cfg)
    ma, da = dict(cfg.model_args), dict(cfg.data_args)
    ma.setdefault("num_classes", default_num_classes(cfg.data, cfg.data_dir))
    dims = spatial_dims(meta, fallback=da.get("spatial_dims"))
    edge = _edge_of(da.get("roi") or ma.get("img_size") or default_edge(meta))
    ma.setdefault("img_size", edge)
    ma.setdefault("in_chans", folder2d_channels(cfg.data_dir) if cfg.data == "folder2d" else 1)
    da.update(spatial_dims=dims, roi=[edge] * dims)
    a_min, a_max = default_window(meta, dims)
    da.setdefault("a_min", a_min)
    da.setdefault("a_max", a_max)
    if dims == 3:
        da.setdefault("spacing", default_spacing(meta))
        da.setdefault("num_samples", RECIPE_3D["num_samples"])
    da.setdefault("names", default_class_names(cfg.data, cfg.data_dir, int(ma["num_classes"])))
    cfg.model_args, cfg.data_args = ma, da
    return record_pretrained(cfg).validate()

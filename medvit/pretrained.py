"""Evaluate and predict with a released segmentation weights file, no run needed (``--model NAME --pretrained``).

The test protocol comes from the model's registry entry (``medvit.registry.metadata(name)["protocol"]``: ``roi``,
``spacing``, ``a_min``/``a_max``, ``dataset``; e.g. MONAI's UNETR / Swin-UNETR BTCV models (Hatamizadeh et al.,
arXiv:2103.10504, arXiv:2201.01740): 96^3 ROI, 1.5 x 1.5 x 2.0 mm, -175..250 HU, 14 classes with the BTCV organ
names) and every value can be overridden. The number of classes is read from the file's classifier.

Example::

    >>> from medvit.inference import Predictor, predict_files
    >>> pred = Predictor.from_weights("unetr", "UNETR_model_best_acc.pth", device="cpu")
    >>> list(predict_files(pred, ["ct.nii.gz"], "preds"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from engine.errors import UserError

__all__ = ["protocol_config", "weights_run"]


def protocol_config(model: str, *, roi: Optional[int] = None, spacing: Optional[Sequence[float]] = None,
                    a_min: Optional[float] = None, a_max: Optional[float] = None, num_classes: Optional[int] = None,
                    in_chans: Optional[int] = None, model_args: Optional[Mapping[str, Any]] = None):
    """A :class:`~engine.config.TrainConfig` of no run: the registry protocol with the given overrides."""
    from engine.config import TrainConfig
    from medvit.recipes import default_edge, default_spacing, default_window, model_metadata, spatial_dims

    meta = model_metadata(model)
    dims = spatial_dims(meta)
    ma = dict(model_args or {})
    edge = int(roi or ma.get("img_size") or default_edge(meta))
    ma["img_size"] = edge
    ma.update({k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans).items() if v is not None})
    window = default_window(meta, dims)
    da: Dict[str, Any] = dict(spatial_dims=dims, roi=[edge] * dims,
                              a_min=float(window[0] if a_min is None else a_min),
                              a_max=float(window[1] if a_max is None else a_max))
    if dims == 3:
        da["spacing"] = [float(s) for s in (spacing or default_spacing(meta))]
        if len(da["spacing"]) != 3 or min(da["spacing"]) <= 0:
            raise UserError(f"--spacing {spacing}: expected 3 positive values in mm")
    if da["a_max"] <= da["a_min"]:
        raise UserError(f"--a-min {da['a_min']} / --a-max {da['a_max']}: the window must be increasing")
    return TrainConfig(task="seg", model=meta["name"], model_args=ma, data_args=da)


def _class_names(names: Optional[Union[str, Sequence[str]]], num_classes: int, dataset: str) -> List[str]:
    from medvit.data.layouts import label_names

    if names is None:
        known = list(label_names(dataset, num_classes)) if dataset else []
        return known if len(known) == num_classes else list(label_names("", num_classes))
    if isinstance(names, str):
        path = Path(names).expanduser()
        names = ([n.strip() for n in path.read_text().splitlines() if n.strip()] if path.is_file()
                 else [n.strip() for n in names.split(",") if n.strip()])
    if len(names) != num_classes:
        raise UserError(f"--class-names: {len(names)} names for a {num_classes}-class model (background first)")
    return [str(n) for n in names]


def weights_run(model: str, pretrained: Union[str, Path], *, names: Optional[Union[str, Sequence[str]]] = None,
                **protocol: Any):
    """Load ``pretrained`` into ``model`` with its test protocol: an :class:`engine.pretrained.WeightsRun` that
    :class:`medvit.inference.Predictor` and :func:`medvit.evaluate.evaluate_checkpoint` take in place of a run.

    Args:
        model: Registry name or alias (``unetr``, ``swin_unetr``, ``transunet``, ``medt``).
        pretrained: The weights file (MONAI, Google ``.npz``, timm, vtk, ...).
        names: Class names, background first (a list, a file with one per line, or ``a,b,c``); default the
            protocol dataset's (BTCV's 14 organs) when the class count matches, else ``class N``.
        **protocol: :func:`protocol_config` overrides (``roi``, ``spacing``, ``a_min``, ``a_max``, ``num_classes``,
            ``in_chans``, ``model_args``).
    """
    import medvit
    from engine.pretrained import weights_run as load
    from medvit.recipes import model_metadata

    cfg = protocol_config(model, **protocol)
    run = load(medvit.create_model, cfg, pretrained)
    k = int(run.cfg.model_args.get("num_classes", getattr(run.model, "num_classes", 2)))
    run.cfg.model_args["num_classes"] = k
    dataset = str((model_metadata(cfg.model).get("protocol") or {}).get("dataset", ""))
    run.cfg.data_args["names"] = _class_names(names, k, dataset)
    return run

"""Evaluate and predict with a released video weights file, no run needed (``--model NAME --pretrained FILE``).

The test protocol comes from the model's registry entry (``videovit.registry.metadata(name)``: ``num_frames``,
``mean``/``std``, ``protocol.stride``, ``protocol.crop_size``, ``protocol.short_side``, ``protocol.views``; e.g.
MViT-B 16x4 (Fan et al., arXiv:2104.11227): 16 frames at stride 4, short side 224, 224 crop, 5x1 views) and every
value can be overridden. Class names come from ``--classes`` or, for a 400- / 101-way classifier, the shipped
Kinetics-400 / UCF101 lists (:mod:`videovit.data.classes`), so a zoo model prints names, not indices.

Example::

    >>> from videovit.inference import Predictor
    >>> p = Predictor.from_weights("mvit", "MVIT_B_16x4.pyth", device="cpu")    # views 5x1 from the registry
    >>> p.predict_file("clip.mp4").top[0]["label"]
    'abseiling'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from engine.errors import UserError

__all__ = ["protocol_config", "weights_run"]


def _meta(model: str) -> Dict[str, Any]:
    import videovit

    try:
        return videovit.registry.metadata(model)
    except ValueError as e:
        raise UserError(f"--model {model}: {e}") from None


def _floats(value: Optional[Sequence[float]], option: str) -> Optional[List[float]]:
    if value is None:
        return None
    value = [float(v) for v in value]
    if len(value) != 3:
        raise UserError(f"{option}: expected 3 values (R,G,B), got {len(value)}")
    return value


def protocol_config(model: str, *, num_frames: Optional[int] = None, stride: Optional[int] = None,
                    crop_size: Optional[int] = None, short_side: Optional[int] = None,
                    mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                    views: Optional[str] = None, model_args: Optional[Mapping[str, Any]] = None,
                    data: Optional[str] = None):
    """A :class:`~engine.config.TrainConfig` of no run: the model's registry test protocol with the given overrides.

    Frames and crop size are shared by model (``num_frames``, ``img_size``) and data, as in training.
    """
    from engine.config import TrainConfig

    from .task import model_recipe

    meta = _meta(model)
    recipe, proto = model_recipe(meta), dict(meta.get("protocol") or {})
    ma = dict(model_args or {})
    frames = int(num_frames or ma.get("num_frames") or recipe["num_frames"])
    crop = int(crop_size or ma.get("img_size") or recipe["crop_size"])
    ma.update(num_frames=frames, img_size=crop)
    da: Dict[str, Any] = dict(num_frames=frames, stride=int(recipe["stride"] if stride is None else stride),
                              crop_size=crop, mean=_floats(mean, "--mean") or list(recipe["mean"]),
                              std=_floats(std, "--std") or list(recipe["std"]),
                              val_views=views or proto.get("views", "1x1"))
    side = short_side or _scaled_short_side(proto, crop)
    if side and int(side) != crop:
        da["eval_short_side"] = int(side)
    if da["stride"] < 0 or frames < 1 or crop < 1:
        raise UserError(f"--num-frames {frames}, --stride {da['stride']}, --crop-size {crop}: must be positive")
    return TrainConfig(task="video", model=meta["name"], model_args=ma, data=data or "", data_args=da)


def _scaled_short_side(proto: Mapping[str, Any], crop: int) -> Optional[int]:
    """The protocol's short side for another crop size, in the same ratio (STAM: 256 for 224 -> 293 for 256)."""
    side, base = proto.get("short_side"), proto.get("crop_size")
    if not side or not base:
        return None
    return int(round(int(side) * crop / int(base)))


def _num_classes(model: Any, cfg: Any) -> int:
    n = cfg.model_args.get("num_classes", getattr(model, "num_classes", None))
    if n is None:
        raise UserError(f"--model {cfg.model}: cannot tell the number of classes; pass --model-arg num_classes=N")
    return int(n)


def _class_names(classes: Optional[Union[str, Sequence[str]]], num_classes: int, data: Optional[str]) -> List[str]:
    from .data.classes import class_list_for, read_class_names

    if classes is None:
        return class_list_for(num_classes, data) or [str(i) for i in range(num_classes)]
    names = read_class_names(classes) if isinstance(classes, str) else [str(c) for c in classes]
    if len(names) != num_classes:
        raise UserError(f"--classes: {len(names)} names for a {num_classes}-class model")
    return names


def weights_run(model: str, pretrained: Union[str, Path], *, classes: Optional[Union[str, Sequence[str]]] = None,
                **protocol: Any):
    """Load ``pretrained`` into ``model`` with its test protocol: an :class:`engine.pretrained.WeightsRun` that
    :class:`videovit.inference.Predictor` takes in place of a run folder.

    Args:
        model: Registry name or alias (``mvit``, ``timesformer``, ...).
        pretrained: The weights file (pytorchvideo, PySlowFast, official TimeSformer/VTN, HF, timm, vtk, ...).
        classes: Class names: a shipped list (``kinetics400``, ``ucf101``), a file, a list; default the shipped
            list of the classifier's size, else ``0..K-1``.
        **protocol: :func:`protocol_config` overrides (``num_frames``, ``stride``, ``crop_size``, ``short_side``,
            ``mean``, ``std``, ``views``, ``model_args``, ``data``).
    """
    import videovit
    from engine.pretrained import weights_run as load

    cfg = protocol_config(model, **protocol)
    run = load(videovit.create_model, cfg, pretrained)
    k = _num_classes(run.model, run.cfg)
    run.cfg.model_args["num_classes"] = k
    run.cfg.data_args["classes"] = _class_names(classes, k, protocol.get("data"))
    return run

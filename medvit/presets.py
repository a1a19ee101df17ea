"""Named training presets for ``vtk seg train --preset NAME``: small configs that finish in minutes on a CPU.

``quick``: UNETR (Hatamizadeh et al., arXiv:2103.10504) at the size of the Colin27 proof in docs/medvit.md (32^3 ROI,
patch 8, width 96, depth 4, 4 heads, feature size 8; 0.70M parameters) with its schedule (AdamW 1e-3, 5 warmup
steps, cosine, 2 crops per step, cached volumes, no loader workers) for 200 steps; other models get their registry
``tiny`` overrides (their ``img_size`` as the ROI) with the same schedule. Explicit options always win over the
preset, and the preset over the paper recipe (:func:`medvit.recipes.with_recipe_defaults`).

Example::

    >>> opts = preset_options("quick", "unetr")
    >>> opts["max_steps"], opts["data_args"]["roi"], opts["model_args"]["embed_dim"]
    (200, 32, 96)
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from engine.choices import check_choice
from medvit.recipes import per_world_batch

__all__ = ["PRESETS", "preset_options"]

PRESETS = ("quick",)
_QUICK_SCHEDULE = dict(max_steps=200, batch_size=1, lr=1e-3, warmup_steps=5, val_every=100, ckpt_every=100,
                       num_workers=0)
_QUICK_UNETR = dict(feature_size=8, embed_dim=96, depth=4, num_heads=4, patch_size=8)


def preset_options(preset: str, model: Optional[str]) -> Dict[str, Any]:
    """The options ``preset`` sets for ``model`` (TrainConfig fields; ``model_args``/``data_args`` as dicts)."""
    import medvit

    check_choice("--preset", preset, PRESETS)
    name = medvit.registry.resolve(model) if model else "unetr"
    data_args: Dict[str, Any] = dict(roi=32, num_samples=2, cache=True)
    if name == "unetr":
        model_args = dict(_QUICK_UNETR)
    elif medvit.registry.is_model(name):
        model_args = medvit.registry.tiny_overrides(name)
        model_args.pop("num_classes", None)  # the dataset's
        data_args["roi"] = int(model_args.pop("img_size", 32))
    else:
        model_args = {}
    # one crop per rank: under torchrun the global batch is WORLD_SIZE (an explicit --batch-size still wins)
    schedule = dict(_QUICK_SCHEDULE, batch_size=per_world_batch(_QUICK_SCHEDULE["batch_size"]))
    return dict(schedule, model_args=model_args, data_args=data_args)


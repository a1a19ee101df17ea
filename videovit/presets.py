"""Named training presets for ``vtk video train --preset NAME``: small configs that finish in minutes on a CPU.

``quick``: TimeSformer (Bertasius et al., arXiv:2102.05095) at the size of the temporal-modelling proof in
docs/videovit.md (32 px, patch 8, width 64, depth 4, 4 heads, 8 frames, no drop-path) with its schedule (AdamW
1e-3, 50 warmup steps, cosine, batch 32, RandomResizedCrop ``min_scale`` 0.7) for 300 steps; other models get their
registry ``tiny`` overrides with the same schedule. Explicit options always win over the preset, and the preset
over the model's registry recipe.

Example::

    >>> opts = preset_options("quick", "timesformer")
    >>> opts["model_args"]["embed_dim"]
    64
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from engine.choices import check_choice

__all__ = ["PRESETS", "preset_options"]

PRESETS = ("quick",)
_QUICK_SCHEDULE = dict(max_steps=300, batch_size=32, lr=1e-3, warmup_steps=50, val_every=100, ckpt_every=100,
                       num_workers=1)
_QUICK_TIMESFORMER = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_frames=8,
                          drop_path_rate=0.0)


def preset_options(preset: str, model: Optional[str]) -> Dict[str, Any]:
    """The options ``preset`` sets for ``model`` (TrainConfig fields; ``model_args``/``data_args`` as dicts)."""
    import videovit

    check_choice("--preset", preset, PRESETS)
    name = videovit.registry.resolve(model) if model else "timesformer_base_patch16_224"
    if name == "timesformer_base_patch16_224":
        model_args = dict(_QUICK_TIMESFORMER)
    elif videovit.registry.is_model(name):
        model_args = videovit.registry.tiny_overrides(name)
        model_args.pop("num_classes", None)  # the dataset's
    else:
        model_args = {}
    return dict(_QUICK_SCHEDULE, model_args=model_args, data_args=dict(min_scale=0.7))


"""backbones: the shared vision-transformer family of vtk.

ViT (2D/3D), the R50+ViT hybrid, Swin (2D/3D), gated axial attention, tubelet embedding, divided space-time
attention and MViT pooling attention, behind one registry::

    >>> from backbones import create_model, list_models
    >>> model = create_model("vit_base_patch16_224", pretrained="ViT-B_16.npz", num_classes=14, in_chans=1)
"""

from backbones._imports import import_model_modules
from backbones._registry import Registry

__all__ = ["create_model", "list_models", "register_model", "registry"]

registry = Registry("backbones")
register_model = registry.register_model
create_model = registry.create_model
list_models = registry.list_models

import_model_modules([
    "backbones.models.vit",
    "backbones.models.vit_hybrid",
    "backbones.models.swin",
    "backbones.models.axial",
])

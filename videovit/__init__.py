"""videovit: video transformers (TimeSformer, ViViT, STAM, VTN, MViT) on pytorchvideo data and decord.

    >>> import videovit
    >>> net = videovit.create_model("timesformer_base_patch16_224", num_classes=400)   # input (B, C, T, H, W)
"""

from backbones._imports import import_model_modules
from backbones._registry import Registry

__all__ = ["create_model", "list_models", "register_model", "registry"]

registry = Registry("videovit")
register_model = registry.register_model
create_model = registry.create_model
list_models = registry.list_models

import_model_modules([
    "videovit.nets.timesformer",
    "videovit.nets.vivit",
    "videovit.nets.stam",
    "videovit.nets.vtn",
    "videovit.nets.mvit",
])

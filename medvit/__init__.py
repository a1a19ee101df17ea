"""medvit: transformer segmentation networks (UNETR, Swin-UNETR, TransUNet, MedT) on MONAI.

    >>> import medvit
    >>> net = medvit.create_model("unetr", in_chans=1, num_classes=14, img_size=96)
"""

from backbones._imports import import_model_modules
from backbones._registry import Registry

__all__ = ["create_model", "list_models", "register_model", "registry"]

registry = Registry("medvit")
register_model = registry.register_model
create_model = registry.create_model
list_models = registry.list_models

import_model_modules([
    "medvit.nets.unetr",
    "medvit.nets.swin_unetr",
    "medvit.nets.transunet",
    "medvit.nets.medt",
])

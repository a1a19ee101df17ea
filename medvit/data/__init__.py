"""medvit data: dataset layouts, MONAI transform recipes, datasets, synthetic BTCV and dataset checks."""

from medvit.data.check import check_dataset
from medvit.data.datasets import SliceDataset, VolumeDataset, load_folder2d, load_slices_3d
from medvit.data.layouts import (BTCV_LABELS, DATA_CHOICES, SYNAPSE_FROM_BTCV, SYNAPSE_LABELS, folder2d_pairs,
                                 label_names, load_datalist, nifti_folder_pairs, remap_labels, resolve_splits)
from medvit.data.synth import synth_btcv
from medvit.data.transforms import LoadNiftid, train_transforms_3d, val_transforms_3d

__all__ = [
    "check_dataset", "SliceDataset", "VolumeDataset", "load_folder2d", "load_slices_3d", "BTCV_LABELS",
    "DATA_CHOICES", "SYNAPSE_FROM_BTCV", "SYNAPSE_LABELS", "folder2d_pairs", "label_names", "load_datalist",
    "nifti_folder_pairs", "remap_labels", "resolve_splits", "synth_btcv", "LoadNiftid", "train_transforms_3d",
    "val_transforms_3d",
]

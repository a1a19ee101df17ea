"""MONAI transform recipes for 3D training and validation, plus the plain array ops shared with prediction.

The 3D recipe is the UNETR/Swin-UNETR BTCV one (Hatamizadeh et al., arXiv:2103.10504; MONAI tutorial
``unetr_btcv_segmentation_3d``): Orientation RAS -> Spacing (1.5, 1.5, 2.0) -> ScaleIntensityRange(-175, 250)
-> CropForeground -> RandCropByPosNegLabel(pos 1, neg 1) -> flips on each axis -> rot90 -> intensity shift.
With ``crop="classes"`` the crop step is MONAI's ``RandCropByLabelClassesd`` instead: crop centres are drawn per
class with the given ``ratios`` (one per class, background first; default equal), so a small structure is seen as
often as a large one.
Files are read by :class:`LoadNiftid`, which validates them (``UserError`` naming the file) instead of MONAI's
``LoadImaged``.
"""

from __future__ import annotations

from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from medvit.io import check_pair, read_nifti

__all__ = ["LoadNiftid", "RECIPE_3D", "CROP_MODES", "train_transforms_3d", "val_transforms_3d", "to_ras", "from_ras",
           "scale_intensity"]

# Defaults of the UNETR BTCV recipe; stored in the run's data_args so predict replays them.
RECIPE_3D = {"spacing": (1.5, 1.5, 2.0), "a_min": -175.0, "a_max": 250.0, "num_samples": 2,
             "pos": 1.0, "neg": 1.0, "flip_prob": 0.2, "rot90_prob": 0.2, "shift_prob": 0.5,
             "crop": "posneg", "ratios": None}
CROP_MODES = ("posneg", "classes")


class LoadNiftid:
    """Read ``image`` (and ``label``) NIfTI files into channel-first MONAI ``MetaTensor`` with their affines.

    Args:
        label_map: Optional label id mapping (e.g. BTCV -> Synapse); ids not in it become background.
        num_classes: Labels must lie in ``0..num_classes-1`` (checked after mapping).
    """

    def __init__(self, label_map: Optional[Mapping[int, int]] = None, num_classes: Optional[int] = None) -> None:
        self.label_map = label_map
        self.num_classes = num_classes

    def __call__(self, item: Mapping[Hashable, str]) -> Dict:
        from monai.data import MetaTensor

        from engine.errors import UserError
        from medvit.data.layouts import remap_labels

        out = dict(item)
        img = read_nifti(item["image"])
        out["image"] = MetaTensor(torch.from_numpy(img.data[None]), affine=torch.from_numpy(img.affine),
                                  meta={"filename_or_obj": str(img.path)})
        if "label" in item:
            lab = read_nifti(item["label"])
            check_pair(img, lab)
            data = np.rint(lab.data).astype(np.int64)
            if self.label_map is not None:
                data = remap_labels(data, self.label_map)
            if self.num_classes is not None and (data.min() < 0 or data.max() >= self.num_classes):
                raise UserError(f"{lab.path}: label values {int(data.min())}..{int(data.max())} outside "
                                f"0..{self.num_classes - 1}")
            out["label"] = MetaTensor(torch.from_numpy(data[None].astype(np.float32)),
                                      affine=torch.from_numpy(lab.affine), meta={"filename_or_obj": str(lab.path)})
        return out


def _deterministic(spacing: Sequence[float], a_min: float, a_max: float, keys: Tuple[str, ...], loader) -> list:
    from monai import transforms as T

    modes = ("bilinear", "nearest")[: len(keys)]
    return [
        loader,
        T.Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes),
        T.ScaleIntensityRanged(keys="image", a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
    ]


def train_transforms_3d(roi: Sequence[int], loader: LoadNiftid, **recipe) -> "object":
    """The training ``Compose`` (deterministic part first, so ``CacheDataset`` caches it)."""
    from monai import transforms as T

    r = {**RECIPE_3D, **recipe}
    keys = ("image", "label")
    return T.Compose(_deterministic(r["spacing"], r["a_min"], r["a_max"], keys, loader) + [
        T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
        T.SpatialPadd(keys=keys, spatial_size=tuple(roi)),
        _rand_crop(roi, r, loader.num_classes),
        T.RandFlipd(keys=keys, prob=r["flip_prob"], spatial_axis=0),
        T.RandFlipd(keys=keys, prob=r["flip_prob"], spatial_axis=1),
        T.RandFlipd(keys=keys, prob=r["flip_prob"], spatial_axis=2),
        T.RandRotate90d(keys=keys, prob=r["rot90_prob"], max_k=3),
        T.RandShiftIntensityd(keys="image", offsets=0.1, prob=r["shift_prob"]),
    ])


def _rand_crop(roi: Sequence[int], r: Mapping, num_classes: Optional[int]) -> "object":
    """The random crop step: positive/negative-centred (``crop="posneg"``) or class-balanced (``"classes"``)."""
    from monai import transforms as T

    from engine.choices import check_choice
    from engine.errors import UserError

    keys = ("image", "label")
    check_choice(f"--data-arg crop={r['crop']}", r["crop"], CROP_MODES, what="crop mode")
    if r["crop"] == "posneg":
        return T.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=tuple(roi), pos=r["pos"],
                                        neg=r["neg"], num_samples=int(r["num_samples"]), image_key="image",
                                        image_threshold=0)
    ratios = r["ratios"]
    if ratios is not None:
        ratios = [float(v) for v in ratios]
        if num_classes is not None and len(ratios) != num_classes:
            raise UserError(f"--data-arg ratios={ratios}: {len(ratios)} values for {num_classes} classes "
                            "(one per class, background first)")
        if min(ratios) < 0 or sum(ratios) <= 0:
            raise UserError(f"--data-arg ratios={ratios}: values must be >= 0 with a positive sum")
    elif num_classes is None:
        raise UserError("--data-arg crop=classes needs the number of classes (--model-arg num_classes=...)")
    return T.RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=tuple(roi), ratios=ratios,
                                     num_classes=num_classes, num_samples=int(r["num_samples"]),
                                     image_key="image", image_threshold=0, warn=False)


def val_transforms_3d(loader: LoadNiftid, **recipe) -> "object":
    """Validation ``Compose``: whole volumes in the training grid (RAS, training spacing, scaled intensity)."""
    from monai import transforms as T

    r = {**RECIPE_3D, **recipe}
    return T.Compose(_deterministic(r["spacing"], r["a_min"], r["a_max"], ("image", "label"), loader))


def to_ras(data: np.ndarray, affine: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Permute/flip ``data`` (X, Y, Z, ...) into RAS voxel order; returns the array and the orientation transform.

    Exact (no interpolation): :func:`from_ras` undoes it.
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, ornt), ornt


def from_ras(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo :func:`to_ras` for an array in RAS voxel order."""
    import nibabel as nib

    return nib.orientations.apply_orientation(data, _inverse_ornt(ornt))


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    inv = np.zeros_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inv[int(dst_axis)] = (src_axis, flip)
    return inv


def scale_intensity(x: np.ndarray, a_min: float, a_max: float) -> np.ndarray:
    """Clip to ``[a_min, a_max]`` and scale to ``[0, 1]`` (ScaleIntensityRange with clip)."""
    return ((np.clip(x, a_min, a_max) - a_min) / (a_max - a_min)).astype(np.float32)

"""MONAI transform recipes for 3D training and validation, plus the plain array ops shared with prediction.

The 3D recipe is the UNETR/Swin-UNETR BTCV one (Hatamizadeh et al., arXiv:2103.10504; MONAI tutorial
``unetr_btcv_segmentation_3d``): Orientation RAS -> Spacing (1.5, 1.5, 2.0) -> ScaleIntensityRange(-175, 250)
-> CropForeground -> RandCropByPosNegLabel(pos 1, neg 1) -> flips on each axis -> rot90 -> intensity shift.
With ``crop="classes"`` the crop step is MONAI's ``RandCropByLabelClassesd`` instead: crop centres are drawn per
class with the given ``ratios`` (one per class, background first; default equal), so a small structure is seen as
often as a large one.
Files are read by :class:`LoadNiftid`, which validates them (``UserError`` naming the file) instead of MONAI's
``LoadImaged``.

Intensity normalisation (``data_args.normalization``) follows nnU-Net (Isensee et al., Nature Methods 18, 2021):
``ct`` clips to the 0.5 / 99.5 percentiles of the training foreground (voxels inside the labels) and subtracts the
foreground mean and divides by its standard deviation (``CTNormalization``; the statistics are stored in the run as
``data_args.intensity_stats``); ``mr`` z-scores each image inside its foreground (the non-zero region with holes
filled, nnU-Net's ``ZScoreNormalization`` with ``use_mask_for_norm``; outside it becomes 0); ``none`` leaves the
intensities as they are; ``window`` (the default of the paper recipes) is the fixed ``a_min``/``a_max`` window
scaled to [0, 1]. ``auto`` is resolved from the dataset's modality by :func:`resolve_normalization`. Every
scheme but ``window`` runs in the image's own grid before resampling, as in nnU-Net, and prediction replays it
(:func:`normalize_image`).
"""

from __future__ import annotations

import re
from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from medvit.io import check_pair, read_nifti

__all__ = ["LoadNiftid", "RECIPE_3D", "CROP_MODES", "train_transforms_3d", "val_transforms_3d", "to_ras", "from_ras",
           "scale_intensity", "NORMALIZATIONS", "foreground_stats", "ct_normalize", "mr_normalize",
           "normalize_image", "resolve_normalization", "Normalized", "augmentations", "AUG_RANGES", "AUG_KEYS"]

# Defaults of the UNETR BTCV recipe; stored in the run's data_args so predict replays them.
RECIPE_3D = {"spacing": (1.5, 1.5, 2.0), "a_min": -175.0, "a_max": 250.0, "num_samples": 2,
             "pos": 1.0, "neg": 1.0, "flip_prob": 0.2, "rot90_prob": 0.2, "shift_prob": 0.5,
             "crop": "posneg", "ratios": None, "normalization": "window", "intensity_stats": None,
             "affine_prob": 0.0, "rotate": 15.0, "scale": 0.15, "translate": 8, "noise_prob": 0.0,
             "blur_prob": 0.0, "contrast_prob": 0.0, "gamma_prob": 0.0}
# nnU-Net's intensity ranges (Isensee et al. 2021, Supplementary Note 4): Gaussian noise variance U(0, 0.1), blur
# sigma U(0.5, 1), multiplicative brightness U(0.75, 1.25), gamma U(0.7, 1.5) on the intensities scaled to [0, 1]
AUG_RANGES = {"noise_std": 0.1 ** 0.5, "blur_sigma": (0.5, 1.0), "contrast": (0.75, 1.25), "gamma": (0.7, 1.5)}
AUG_KEYS = ("affine_prob", "rotate", "scale", "translate", "noise_prob", "blur_prob", "contrast_prob", "gamma_prob")
CROP_MODES = ("posneg", "classes")
NORMALIZATIONS = ("auto", "ct", "mr", "window", "none")
_CT_WORDS = ("ct",)
_MR_WORDS = ("mr", "mri", "t1", "t2", "flair", "t1ce", "t1gd", "adc", "dwi", "pd", "bold")


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


def _deterministic(spacing: Sequence[float], a_min: float, a_max: float, keys: Tuple[str, ...], loader,
                   normalization: str = "window", intensity_stats: Optional[Mapping] = None) -> list:
    from monai import transforms as T

    modes = ("bilinear", "nearest")[: len(keys)]
    scheme = _scheme(normalization)
    pre = [] if scheme == "window" else [Normalized(scheme, intensity_stats)]  # nnU-Net: before resampling
    post = [T.ScaleIntensityRanged(keys="image", a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)]
    return [loader] + pre + [
        T.Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes),
    ] + (post if scheme == "window" else [])


def train_transforms_3d(roi: Sequence[int], loader: LoadNiftid, **recipe) -> "object":
    """The training ``Compose`` (deterministic part first, so ``CacheDataset`` caches it)."""
    from monai import transforms as T

    r = {**RECIPE_3D, **recipe}
    keys = ("image", "label")
    return T.Compose(_deterministic(r["spacing"], r["a_min"], r["a_max"], keys, loader, r["normalization"],
                                    r["intensity_stats"]) + [
        T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
        T.SpatialPadd(keys=keys, spatial_size=tuple(roi)),
        _rand_crop(roi, r, loader.num_classes),
        T.RandFlipd(keys=keys, prob=r["flip_prob"], spatial_axis=0),
        T.RandFlipd(keys=keys, prob=r["flip_prob"], spatial_axis=1),
        T.RandFlipd(keys=keys, prob=r["flip_prob"], spatial_axis=2),
        T.RandRotate90d(keys=keys, prob=r["rot90_prob"], max_k=3),
        T.RandShiftIntensityd(keys="image", offsets=0.1, prob=r["shift_prob"]),
    ] + augmentations(r))


def augmentations(r: Mapping) -> list:
    """nnU-Net-style spatial and intensity augmentation of a crop (Isensee et al., Nature Methods 18, 2021).

    Each step runs with its own probability (``data_args``; all 0 by default, so the paper recipes are unchanged):
    ``affine_prob`` a random rotation (``rotate`` degrees about each axis), isotropic-per-axis scaling
    (``1 +- scale``) and translation (``translate`` voxels per axis; zeros and background enter at the border);
    ``noise_prob`` Gaussian noise, ``blur_prob`` Gaussian blur, ``contrast_prob`` multiplicative brightness and
    ``gamma_prob`` gamma on the crop rescaled to [0, 1] (ranges :data:`AUG_RANGES`). Gamma and brightness let a
    model trained on one scanner's contrast read another's; blur lets one trained on a sharp scan read a smooth
    average (a template).
    """
    from monai import transforms as T

    keys = ("image", "label")
    out = []
    if r["affine_prob"] > 0:
        rad = float(r["rotate"]) * np.pi / 180.0
        out.append(T.RandAffined(keys=keys, prob=float(r["affine_prob"]), rotate_range=(rad,) * 3,
                                 scale_range=(float(r["scale"]),) * 3, translate_range=(float(r["translate"]),) * 3,
                                 mode=("bilinear", "nearest"), padding_mode="zeros"))
    sig = AUG_RANGES["blur_sigma"]
    if r["noise_prob"] > 0:
        out.append(T.RandGaussianNoised(keys="image", prob=float(r["noise_prob"]), std=AUG_RANGES["noise_std"]))
    if r["blur_prob"] > 0:
        out.append(T.RandGaussianSmoothd(keys="image", prob=float(r["blur_prob"]), sigma_x=sig, sigma_y=sig,
                                         sigma_z=sig))
    if r["contrast_prob"] > 0:
        lo, hi = AUG_RANGES["contrast"]
        out.append(T.RandScaleIntensityd(keys="image", factors=(lo - 1.0, hi - 1.0), prob=float(r["contrast_prob"])))
    if r["gamma_prob"] > 0:  # MONAI rescales to [0, 1], applies the gamma and restores the range
        out.append(T.RandAdjustContrastd(keys="image", prob=float(r["gamma_prob"]), gamma=AUG_RANGES["gamma"]))
    return out


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
    return T.Compose(_deterministic(r["spacing"], r["a_min"], r["a_max"], ("image", "label"), loader,
                                    r["normalization"], r["intensity_stats"]))


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


# ------------------------------------------------------------------------------------ intensity normalisation
def _scheme(name: Optional[str]) -> str:
    from engine.choices import check_choice

    name = "window" if name is None else str(name)
    check_choice("--data-arg normalization", name, NORMALIZATIONS, what="normalisation")
    if name == "auto":
        raise ValueError("normalization 'auto' must be resolved first (resolve_normalization)")
    return name


def foreground_stats(values: np.ndarray) -> Dict[str, float]:
    """nnU-Net's intensity statistics of foreground voxel values: mean, std, median, min, max, 0.5/99.5 pct."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("no foreground voxels to compute intensity statistics from")
    lo, med, hi = np.percentile(v, [0.5, 50.0, 99.5])
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(med), "min": float(v.min()),
            "max": float(v.max()), "percentile_00_5": float(lo), "percentile_99_5": float(hi)}


def ct_normalize(x: np.ndarray, stats: Mapping[str, float]) -> np.ndarray:
    """nnU-Net ``CTNormalization``: clip to the foreground 0.5/99.5 percentiles, then (x - mean) / std."""
    lo, hi = float(stats["percentile_00_5"]), float(stats["percentile_99_5"])
    std = max(float(stats["std"]), 1e-8)
    return ((np.clip(x, lo, hi) - float(stats["mean"])) / std).astype(np.float32)


def nonzero_mask(x: np.ndarray) -> np.ndarray:
    """nnU-Net's foreground of an image without labels: the non-zero voxels, holes filled."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(x != 0)


def mr_normalize(x: np.ndarray) -> np.ndarray:
    """nnU-Net ``ZScoreNormalization`` inside the foreground (:func:`nonzero_mask`); 0 outside it."""
    x = np.asarray(x, np.float32)
    mask = nonzero_mask(x)
    if not mask.any():
        return np.zeros_like(x)
    fg = x[mask].astype(np.float64)
    out = np.zeros_like(x)
    out[mask] = (fg - fg.mean()) / max(float(fg.std()), 1e-8)
    return out


def normalize_image(x: np.ndarray, data_args: Mapping) -> np.ndarray:
    """Normalise an image (any shape, own grid) as its run was trained (``data_args.normalization``)."""
    scheme = _scheme(data_args.get("normalization"))
    if scheme == "window":
        return scale_intensity(x, float(data_args.get("a_min", RECIPE_3D["a_min"])),
                               float(data_args.get("a_max", RECIPE_3D["a_max"])))
    if scheme == "ct":
        stats = data_args.get("intensity_stats")
        if not stats:
            raise ValueError("normalization 'ct' needs data_args.intensity_stats (the training foreground's)")
        return ct_normalize(x, stats)
    if scheme == "mr":
        return mr_normalize(x)
    return np.asarray(x, np.float32)


def resolve_normalization(requested: Optional[str], modality: Optional[str]) -> str:
    """The scheme for ``auto``: ``ct`` for a CT modality, ``mr`` for an MR one (T1, T2, FLAIR, ADC, ...), else
    ``window``; any other request is returned as is (after the choice check)."""
    from engine.choices import check_choice

    name = "window" if requested is None else str(requested)
    check_choice("--data-arg normalization", name, NORMALIZATIONS, what="normalisation")
    if name != "auto":
        return name
    words = set(re.findall(r"[a-z0-9]+", str(modality or "").lower()))
    if words & set(_CT_WORDS):
        return "ct"
    if words & set(_MR_WORDS):
        return "mr"
    return "window"


class Normalized:
    """Dict transform: :func:`normalize_image` on ``image`` (a MONAI ``MetaTensor``, meta kept).

    Args:
        scheme: ``ct``, ``mr`` or ``none``.
        stats: Foreground statistics for ``ct`` (:func:`foreground_stats`).
    """

    def __init__(self, scheme: str, stats: Optional[Mapping] = None) -> None:
        if _scheme(scheme) == "ct" and not stats:
            raise ValueError("normalization 'ct' needs the training foreground's intensity statistics")
        self.data_args = {"normalization": scheme, "intensity_stats": stats}

    def __call__(self, item: Mapping) -> Dict:
        from monai.data import MetaTensor

        out = dict(item)
        img = out["image"]
        arr = np.asarray(img.detach().cpu().numpy() if torch.is_tensor(img) else img)
        res = np.stack([normalize_image(c, self.data_args) for c in arr])  # channel by channel
        meta = dict(getattr(img, "meta", {}) or {})
        affine = getattr(img, "affine", None)
        out["image"] = MetaTensor(torch.from_numpy(res), affine=affine, meta=meta)
        return out

"""Map-style datasets for the seg ``Task``: 3D crops (MONAI), 2D slices of 3D volumes, 2D image folders.

* :class:`VolumeDataset` runs a MONAI ``Compose`` (optionally through ``CacheDataset``, which caches the
  deterministic prefix) and exposes ``set_random_state(seed)`` so the engine seeds every sample.
* :class:`SliceDataset` serves 2D samples (C, H, W) / (H, W) for TransUNet and MedT. From 3D data it trains on
  axial slices (TransUNet, Chen et al., arXiv:2102.04306: clip to [-125, 275] HU, resize to ``img_size``, rot90 +
  flip); in validation mode each item is a whole stack of slices, (Z, C, H, W) / (Z, H, W), so a volume is
  scored as a volume. 2D folders (GlaS, MoNuSeg for MedT, Valanarasu et al., arXiv:2102.10662) give Z = 1.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from medvit.data.transforms import scale_intensity, to_ras
from medvit.io import check_pair, read_image2d, read_nifti

__all__ = ["VolumeDataset", "SliceDataset", "load_slices_3d", "load_folder2d", "resize2d"]


class VolumeDataset(Dataset):
    """MONAI dict transforms over a list of ``{"image", "label"}`` files.

    Args:
        items: Datalist entries with absolute paths.
        transform: A MONAI ``Compose``.
        cache: Use ``monai.data.CacheDataset`` (caches everything before the first random transform).
        num_workers: Threads used to fill the cache.
    """

    def __init__(self, items: List[dict], transform: Callable, cache: bool = False, num_workers: int = 0) -> None:
        from monai.data import CacheDataset, Dataset as MonaiDataset

        self.items = items
        self.transform = transform
        if cache:
            self.ds = CacheDataset(items, transform, cache_rate=1.0, num_workers=max(1, num_workers),
                                   progress=False)
        else:
            self.ds = MonaiDataset(items, transform)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        return self.ds[index]

    def set_random_state(self, seed: int) -> None:
        """Seed every random MONAI transform (the engine calls this per sample for exact resume)."""
        self.transform.set_random_state(seed=int(seed) % (2**32))


class SliceDataset(Dataset):
    """2D samples from stacks of slices.

    Args:
        stacks: Per case, (image (Z, C, H, W) float32, label (Z, H, W) int64), already at ``img_size``.
        train: Serve single random-augmented slices; otherwise whole stacks.
        rot90_flip_prob: Probability of TransUNet's rot90 + flip (MedT: horizontal flip only, via ``hflip_only``).
    """

    def __init__(self, stacks: List[Tuple[np.ndarray, np.ndarray]], train: bool = True,
                 rot90_flip_prob: float = 0.5, hflip_only: bool = False) -> None:
        self.stacks = stacks
        self.train = train
        self.prob = rot90_flip_prob
        self.hflip_only = hflip_only
        self.index = [(c, z) for c, (img, _) in enumerate(stacks) for z in range(img.shape[0])]
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.index) if self.train else len(self.stacks)

    def set_random_state(self, seed: int) -> None:
        self.rng = np.random.default_rng(int(seed) % (2**32))

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if not self.train:
            img, lab = self.stacks[i]
            return torch.from_numpy(img), torch.from_numpy(lab)
        c, z = self.index[i]
        img, lab = self.stacks[c][0][z], self.stacks[c][1][z]  # (C, H, W), (H, W)
        if self.rng.random() < self.prob:
            if self.hflip_only:
                img, lab = img[:, :, ::-1], lab[:, ::-1]
            else:
                k = int(self.rng.integers(4))
                img, lab = np.rot90(img, k, axes=(1, 2)), np.rot90(lab, k)
                axis = int(self.rng.integers(2))
                img, lab = np.flip(img, axis + 1), np.flip(lab, axis)
        return torch.from_numpy(img.copy()), torch.from_numpy(lab.copy())


def resize2d(x: np.ndarray, size: Sequence[int], nearest: bool = False) -> np.ndarray:
    """Resize (N, C, H, W) float or (N, H, W) int arrays to ``size`` (bilinear, or nearest for labels)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if nearest:
        out = torch.nn.functional.interpolate(t[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
        return out.round().long().numpy()
    return torch.nn.functional.interpolate(t.float(), size=tuple(size), mode="bilinear",
                                           align_corners=False).numpy()


def load_slices_3d(items: List[dict], img_size: Sequence[int], a_min: float = -125.0, a_max: float = 275.0,
                   label_map: Optional[dict] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Read volumes, reorient to RAS, clip/scale and resize every axial slice to ``img_size``."""
    from medvit.data.layouts import remap_labels

    stacks = []
    for item in items:
        img = read_nifti(item["image"])
        lab = read_nifti(item["label"])
        check_pair(img, lab)
        x, _ = to_ras(scale_intensity(img.data, a_min, a_max), img.affine)  # (X, Y, Z) RAS
        y, _ = to_ras(np.rint(lab.data).astype(np.int64), lab.affine)
        if label_map is not None:
            y = remap_labels(y, label_map)
        x = np.ascontiguousarray(x.transpose(2, 0, 1))[:, None]  # (Z, 1, X, Y)
        y = np.ascontiguousarray(y.transpose(2, 0, 1))  # (Z, X, Y)
        stacks.append((resize2d(x, img_size), resize2d(y, img_size, nearest=True)))
    return stacks


def load_folder2d(items: List[dict], img_size: Sequence[int],
                  num_classes: Optional[int] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Read 2D image/mask pairs and resize them to ``img_size`` (MedT trains at 128 x 128); with ``num_classes``
    every mask value must be a class id ``0..num_classes-1`` (:func:`medvit.data.check.label_problem`)."""
    from engine.errors import UserError
    from medvit.data.check import check_mask

    stacks = []
    for item in items:
        img = read_image2d(item["image"])  # (C, H, W)
        mask = read_image2d(item["label"], mask=True)  # (H, W)
        if img.shape[1:] != mask.shape:
            raise UserError(f"{item['label']}: mask shape {mask.shape} does not match image {img.shape[1:]}")
        if num_classes is not None:
            check_mask(item["label"], mask, num_classes)
        stacks.append((resize2d(img[None], img_size), resize2d(mask[None], img_size, nearest=True)))
    chans = {s[0].shape[1] for s in stacks}
    if len(chans) > 1:
        raise UserError(f"{items[0]['image']}: images mix channel counts {sorted(chans)}; convert them to one")
    return stacks

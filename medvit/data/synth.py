"""Synthetic BTCV: CT-like abdominal volumes in the exact on-disk layout of the UNETR BTCV release.

The layout is the one UNETR (Hatamizadeh et al., arXiv:2103.10504) trains on: ``dataset_0.json`` with the BTCV
keys, ``imagesTr/img0001.nii.gz``, ``labelsTr/label0001.nii.gz``, ``imagesTs/img00NN.nii.gz``. Each case is a
body ellipse (air -1000 HU outside, fat -100 HU, soft tissue 40 HU, a spine at 700 HU) holding the 13 BTCV organs
as deformed ellipsoids at plausible anatomical positions (liver on the patient's right, spleen on the left, aorta
left-anterior of the spine, ...) with distinct HU values plus noise. Voxels are anisotropic and the affine is
LPS-like (negative x/y columns, as DICOM-converted CT has), so every orientation and spacing path is exercised.

At ``size=512`` the in-plane spacing is 0.7-0.9 mm and slices are 3-6x thicker, as in BTCV. Smaller sizes scale
the voxel size up so that the field of view stays a whole abdomen (~400 mm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from engine.io import atomic_write_text
from medvit.data.layouts import BTCV_LABELS
from medvit.io import write_nifti

__all__ = ["synth_btcv", "synth_case", "ORGANS"]

# label id: (centre (x R+, y A+, z S+) in body-normalised units, radii, HU); painted in this order.
ORGANS: Dict[int, Tuple[Tuple[float, float, float], Tuple[float, float, float], float]] = {
    6: ((0.40, 0.05, 0.30), (0.32, 0.34, 0.30), 60.0),     # liver
    1: ((-0.55, -0.20, 0.30), (0.14, 0.13, 0.20), 45.0),   # spleen
    7: ((-0.28, 0.18, 0.35), (0.18, 0.15, 0.18), 20.0),    # stomach
    2: ((0.33, -0.42, -0.10), (0.10, 0.11, 0.22), 150.0),  # right kidney
    3: ((-0.33, -0.42, -0.05), (0.10, 0.11, 0.22), 150.0),  # left kidney
    4: ((0.33, 0.28, 0.05), (0.08, 0.08, 0.12), 5.0),      # gallbladder
    11: ((-0.05, -0.08, -0.05), (0.25, 0.07, 0.08), 90.0),  # pancreas
    10: ((0.06, -0.02, 0.12), (0.09, 0.05, 0.06), 180.0),  # portal/splenic veins
    8: ((-0.06, -0.32, 0.00), (0.06, 0.06, 0.90), 250.0),  # aorta
    9: ((0.14, -0.28, 0.00), (0.06, 0.05, 0.80), 120.0),   # inferior vena cava
    5: ((-0.04, -0.36, 0.70), (0.04, 0.04, 0.30), 30.0),   # esophagus
    12: ((0.24, -0.36, 0.28), (0.05, 0.05, 0.07), 25.0),   # right adrenal
    13: ((-0.24, -0.36, 0.30), (0.05, 0.05, 0.07), 35.0),  # left adrenal
}


def synth_case(size: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case: image (S, S, Z) int16 HU, label (S, S, Z) uint8 and its LPS-like affine (4, 4)."""
    sxy = rng.uniform(0.7, 0.9) * 512.0 / size
    sz = sxy * rng.uniform(3.0, 6.0)
    fov = sxy * size
    nz = max(12, int(round(0.5 * fov / sz)))
    sz = 0.5 * fov / nz  # small sizes: fewer, thinner-than-scaled slices keep the organs sampled
    affine = np.diag([-sxy, -sxy, sz, 1.0])  # voxel axes point to patient Left, Posterior, Superior
    affine[:3, 3] = [sxy * (size - 1) / 2, sxy * (size - 1) / 2 + 0.05 * fov, -sz * (nz - 1) / 2]
    ijk = np.indices((size, size, nz), dtype=np.float32).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, size, size, nz)
    u = world / np.float32(0.45 * fov)  # body-normalised coordinates, body half-width ~0.9
    image, label = _body(u, rng), np.zeros((size, size, nz), np.uint8)
    warp = _smooth_noise((size, size, nz), rng) * 0.35
    for lab, (centre, radii, hu) in ORGANS.items():
        c = np.asarray(centre) + rng.uniform(-0.03, 0.03, 3)
        r = np.asarray(radii) * rng.uniform(0.9, 1.1, 3)
        d = sum(((u[k] - c[k]) / r[k]) ** 2 for k in range(3))
        inside = (d + warp < 1.0) & (image > -500)
        label[inside] = lab
        image[inside] = hu + rng.uniform(-10, 10)
    image += rng.normal(0.0, 12.0, image.shape).astype(np.float32)
    return np.round(image).astype(np.int16), label, affine


def synth_btcv(out: Path, cases: int = 6, size: int = 96, seed: int = 0, test_cases: int = 2) -> Path:
    """Write ``cases`` labelled cases (+ ``test_cases`` unlabelled) in the BTCV layout under ``out``.

    The last ``max(1, cases // 5)`` labelled cases form the ``validation`` list, as ``dataset_0.json`` does.
    Returns the datalist path.
    """
    if cases < 2 or size < 16:
        raise ValueError(f"synth_btcv needs cases >= 2 and size >= 16, got cases={cases}, size={size}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(1, cases + test_cases + 1):
        image, label, affine = synth_case(size, rng)
        write_nifti(out / ("imagesTr" if i <= cases else "imagesTs") / f"img{i:04d}.nii.gz", image, affine)
        if i <= cases:
            write_nifti(out / "labelsTr" / f"label{i:04d}.nii.gz", label, affine)
            entries.append({"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"})
    n_val = max(1, cases // 5)
    meta = {
        "description": "btcv (synthetic, written by `vtk data synth btcv`)",
        "labels": {str(i): n for i, n in enumerate(BTCV_LABELS)},
        "licence": "yt",
        "modality": {"0": "CT"},
        "name": "btcv",
        "numTest": test_cases,
        "numTraining": cases,
        "reference": "Vanderbilt University (synthetic stand-in)",
        "release": "1.0 06/08/2015",
        "tensorImageSize": "3D",
        "test": [f"imagesTs/img{i:04d}.nii.gz" for i in range(cases + 1, cases + test_cases + 1)],
        "training": entries[:-n_val],
        "validation": entries[-n_val:],
    }
    return atomic_write_text(out / "dataset_0.json", json.dumps(meta, indent=4))


def _body(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Air outside, a fat layer, soft tissue inside and a spine (float32 HU), for normalised coords ``u``."""
    ex, ey = (u[0] / 0.9) ** 2 + (u[1] / 0.7) ** 2, (u[0] / 0.8) ** 2 + (u[1] / 0.6) ** 2
    img = np.full(u.shape[1:], -1000.0, np.float32)
    img[ex < 1.0] = -100.0
    img[ey < 1.0] = 40.0
    spine = (u[0] / 0.1) ** 2 + ((u[1] + 0.52) / 0.1) ** 2 < 1.0
    img[spine] = 700.0 + rng.uniform(-50, 50)
    return img


def _smooth_noise(shape: Tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [-1, 1] that deforms the ellipsoids."""
    from scipy.ndimage import zoom

    coarse = rng.uniform(-1, 1, (4, 4, 4)).astype(np.float32)
    return zoom(coarse, [s / 4 for s in shape], order=3)[: shape[0], : shape[1], : shape[2]].clip(-1, 1)

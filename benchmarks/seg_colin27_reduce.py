"""Build ``medvit/assets/colin27/`` from the Colin27 T1 (ch2) and the AAL atlas.

Reduction (documented in ``medvit/assets/colin27/README.md``):

* AAL's 116 regions (Tzourio-Mazoyer et al., NeuroImage 2002) are merged into 4 groups + background:
  1 left cerebral cortex (every ``*_L`` region that is not deep grey matter or cerebellum),
  2 right cerebral cortex (the same for ``*_R``), 3 cerebellum (``Cerebelum_*`` and ``Vermis_*``),
  4 deep grey matter (``Caudate``, ``Putamen``, ``Pallidum``, ``Thalamus``, both sides).
* 1 mm -> 3 mm by 3x3x3 block averaging (T1) and a majority vote of the one-hot groups (labels); the affine is
  scaled and shifted to the block centres.
* A held-out validation case: the same volume mirrored left-right (labels 1 and 2 swapped), with a gamma 1.3
  intensity change and Gaussian noise. Training never sees it (the Colin27 run disables random flips), but it
  is the same subject, so it measures learning and left/right generalisation, not cross-subject accuracy.

Usage::

    python benchmarks/seg_colin27_reduce.py --src /work/shared/data/colin27 --out medvit/assets/colin27
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

__all__ = ["GROUPS", "group_map", "reduce", "main"]

GROUPS = ("background", "left cerebral cortex", "right cerebral cortex", "cerebellum", "deep grey matter")
_DEEP = ("Caudate", "Putamen", "Pallidum", "Thalamus")


def group_map(names_txt: Path) -> np.ndarray:
    """Look-up table AAL id -> group id, read from ``aal.nii.txt`` (``id name code`` per line)."""
    lut = np.zeros(256, np.uint8)
    for line in names_txt.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        idx, name = int(parts[0]), parts[1]
        if name.startswith(("Cerebelum", "Vermis")):
            lut[idx] = 3
        elif name.startswith(_DEEP):
            lut[idx] = 4
        elif name.endswith("_L"):
            lut[idx] = 1
        elif name.endswith("_R"):
            lut[idx] = 2
    return lut


def _pool(x: np.ndarray, k: int) -> torch.Tensor:
    """Block-average (C, X, Y, Z) by ``k`` after zero-padding each axis up to a multiple of ``k``."""
    t = torch.from_numpy(x).float()[None]
    pad = []
    for n in reversed(t.shape[2:]):
        pad += [0, (-n) % k]
    return torch.nn.functional.avg_pool3d(torch.nn.functional.pad(t, pad), k)[0]


def reduce(src: Path, k: int = 3):
    """Return (t1 uint8, groups uint8, affine) at ``k`` mm."""
    t1 = nib.load(str(src / "ch2.nii.gz"))
    aal = nib.load(str(src / "aal.nii.gz"))
    groups = group_map(src / "aal.nii.txt")[np.asarray(aal.dataobj).astype(np.int64)]
    img = _pool(np.asarray(t1.dataobj, np.float32)[None], k)[0].round().clamp(0, 255).byte().numpy()
    onehot = np.stack([groups == g for g in range(len(GROUPS))]).astype(np.float32)
    lab = _pool(onehot, k).argmax(0).byte().numpy()
    scale = np.diag([k, k, k, 1.0])
    scale[:3, 3] = (k - 1) / 2.0  # new voxel i sits at the centre of old voxels k*i .. k*i+k-1
    return img, lab, t1.affine @ scale


def mirrored(img: np.ndarray, lab: np.ndarray, seed: int = 0):
    """The held-out case: left-right mirror (x axis), labels 1<->2 swapped, gamma 1.3 and noise."""
    rng = np.random.default_rng(seed)
    img = img[::-1].astype(np.float32) / 255.0
    img = 255.0 * img ** 1.3 + rng.normal(0, 4.0, img.shape)
    lab = lab[::-1].copy()
    swap = np.array([0, 2, 1, 3, 4], np.uint8)
    return np.clip(img, 0, 255).round().astype(np.uint8), swap[lab]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("/work/shared/data/colin27"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "medvit/assets/colin27")
    ap.add_argument("--mm", type=int, default=3)
    args = ap.parse_args(argv)
    img, lab, affine = reduce(args.src, args.mm)
    mimg, mlab = mirrored(img, lab)
    out = args.out
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    files = {"img0001": img, "label0001": lab, "img0002": mimg, "label0002": mlab}
    for name, arr in files.items():
        sub = "imagesTr" if name.startswith("img") else "labelsTr"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(arr), affine), str(out / sub / f"{name}.nii.gz"))
    meta = {
        "description": f"Colin27 T1 + AAL reduced to {len(GROUPS) - 1} regions at {args.mm} mm (see README.md)",
        "labels": {str(i): n for i, n in enumerate(GROUPS)}, "modality": {"0": "MRI T1"}, "name": "colin27",
        "tensorImageSize": "3D", "numTraining": 1, "numTest": 0, "test": [],
        "training": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}],
        "validation": [{"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"}],
    }
    (out / "dataset_0.json").write_text(json.dumps(meta, indent=4))
    shutil.copyfile(args.src / "COPYRIGHT.debian", out / "COPYRIGHT")
    counts = np.bincount(lab.ravel(), minlength=len(GROUPS))
    print(f"wrote {out}: shape {img.shape}, voxels per group {dict(zip(GROUPS, counts.tolist()))}")


if __name__ == "__main__":
    main()

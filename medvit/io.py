"""NIfTI and 2D image IO with up-front validation.

Every reader raises :class:`engine.errors.UserError` with a one-line message naming the file when the file is
missing, unreadable, truncated, has the wrong number of dimensions or holds NaN/inf voxels, so a training run
fails before its first step instead of in the middle of an epoch. Writers are atomic (:mod:`engine.io`).

Example::

    >>> img = read_nifti("imagesTr/img0001.nii.gz")          # NiftiVolume(data (X, Y, Z) float32, affine, header)
    >>> write_nifti("pred.nii.gz", mask.astype("uint8"), img.affine, img.header)
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

from engine.errors import UserError
from engine.io import atomic_write_bytes

__all__ = [
    "NiftiVolume", "read_nifti", "read_nifti_header", "write_nifti", "check_pair", "read_image2d",
    "IMAGE2D_SUFFIXES", "NIFTI_SUFFIXES", "nifti_inputs", "nifti_stem",
]

PathLike = Union[str, os.PathLike]
IMAGE2D_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_LEVEL = 1  # nibabel's own default for .nii.gz


@dataclass
class NiftiVolume:
    """A NIfTI volume: ``data`` (X, Y, Z) in the file's own voxel order, its ``affine`` (4, 4) and ``header``."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    header: Any

    @property
    def spacing(self) -> Tuple[float, ...]:
        """Voxel size in millimetres along each array axis (column norms of the affine)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))


def read_nifti_header(path: PathLike) -> Any:
    """Open ``path`` lazily and return the nibabel image (header and affine only; voxels are not read)."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    try:
        return nib.load(str(p))
    except Exception as e:  # nibabel raises several types for corrupt headers
        raise UserError(f"{p}: unreadable NIfTI ({_reason(e)})") from None


def read_nifti(path: PathLike, *, ndim: Optional[int] = 3, dtype: Any = np.float32,
               allow_nan: bool = False) -> NiftiVolume:
    """Read a NIfTI file and validate it.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        ndim: Required number of spatial dimensions (a trailing singleton 4th axis is squeezed); ``None`` skips
            the check. A 2D file given where a volume is needed fails here.
        dtype: Output dtype of ``data``.
        allow_nan: Accept NaN/inf voxels (otherwise a ``UserError`` names the file and the count).
    """
    img = read_nifti_header(path)
    p = Path(path)
    try:
        data = np.asarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as e:
        n = int(np.prod(img.shape))
        raise UserError(f"{p}: truncated or corrupt NIfTI (expected {n} voxels; {_reason(e)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if ndim is not None and data.ndim != ndim:
        raise UserError(f"{p}: expected a {ndim}D volume, got shape {tuple(data.shape)}")
    data = data.astype(dtype, copy=False)
    if not allow_nan and np.issubdtype(data.dtype, np.floating):
        bad = int((~np.isfinite(data)).sum())
        if bad:
            raise UserError(f"{p}: {bad} NaN/inf voxels")
    return NiftiVolume(p, data, np.asarray(img.affine, dtype=np.float64), img.header)


def check_pair(image: NiftiVolume, label: NiftiVolume, *, atol: float = 1e-3) -> None:
    """Raise ``UserError`` if an image and its label differ in shape or affine."""
    if image.data.shape != label.data.shape:
        raise UserError(f"{label.path}: label shape {tuple(label.data.shape)} does not match image "
                        f"{image.path.name} shape {tuple(image.data.shape)}")
    if not np.allclose(image.affine, label.affine, atol=atol):
        raise UserError(f"{label.path}: label affine differs from image {image.path.name} affine "
                        f"(max difference {np.abs(image.affine - label.affine).max():.4g})")


def write_nifti(path: PathLike, data: np.ndarray, affine: np.ndarray, header: Any = None) -> Path:
    """Write ``data`` with ``affine`` (and the source ``header``'s metadata) atomically to ``path``."""
    import nibabel as nib

    p = Path(path)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(np.asarray(data), affine, header=hdr)
    img.set_data_dtype(np.asarray(data).dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if hdr is not None:  # a label map must not inherit the CT's intensity scaling
        img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    raw = img.to_bytes()  # single-file NIfTI-1 (header + voxels)
    if p.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0)
    return atomic_write_bytes(p, raw)


def nifti_stem(path: PathLike) -> str:
    """``img0001`` for ``img0001.nii.gz`` or ``img0001.nii``."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def nifti_inputs(path: PathLike) -> list:
    """``path`` itself, or the sorted ``.nii``/``.nii.gz`` files of a folder; ``UserError`` when there are none."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.endswith(NIFTI_SUFFIXES))
        if not files:
            raise UserError(f"{p}: no .nii/.nii.gz files")
        return files
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    return [p]


def read_image2d(path: PathLike, *, mask: bool = False) -> np.ndarray:
    """Read a PNG/BMP/TIF image (``skimage.io.imread``) as (C, H, W) float32 in [0, 1], or a mask as (H, W) int64
    class ids.

    Masks stored as 0/255 (GlaS, MoNuSeg) become 0/1; other masks keep their integer values.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    arr = _imread2d(p, mask)
    if mask:
        arr = arr.astype(np.int64)
        values = np.unique(arr)
        if values.max(initial=0) > 1 and set(values.tolist()) <= {0, 255}:
            arr = (arr > 0).astype(np.int64)
        return arr
    arr = arr.astype(np.float32)
    arr = arr[None] if arr.ndim == 2 else arr[..., :3].transpose(2, 0, 1)  # (C, H, W)
    scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return arr / scale


def _imread2d(p: Path, mask: bool) -> np.ndarray:
    """Pixels of a 2D image by ``skimage.io.imread``; a mask stored as RGB(A) becomes one channel (its grey level,
    as PIL's ``L``: the common channel when R = G = B)."""
    from skimage.io import imread

    try:
        arr = np.asarray(imread(str(p)))
    except Exception as e:
        raise UserError(f"{p}: unreadable image ({_reason(e)})") from None
    if arr.ndim not in (2, 3):
        raise UserError(f"{p}: expected a 2D image, got pixel array of shape {arr.shape}")
    if mask and arr.ndim == 3:
        rgb = arr[..., :3]
        if (rgb == rgb[..., :1]).all():
            arr = rgb[..., 0]
        else:  # ITU-R 601-2 luma, PIL's RGB -> L
            arr = np.floor(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114 + 0.5).astype(np.uint8)
    return arr


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split())[:160] or type(e).__name__

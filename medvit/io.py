"""NIfTI and 2D image IO with up-front validation.

Every reader raises :class:`engine.errors.UserError` with a one-line message naming the file when the file is
missing, unreadable, truncated, has the wrong number of dimensions or holds NaN/inf voxels, so a training run
fails before its first step instead of in the middle of an epoch. Writers are atomic (:mod:`engine.io`).

:func:`check_volume_header` runs before any voxel is read (every reader calls it): the header's dimensions must
be positive, the voxel count must stay under a cap (:data:`MAX_VOXELS`, ``VTK_MAX_VOXELS`` overrides it) and fit
the file (a ``.nii`` must hold every byte; a ``.nii.gz`` must be able to: deflate expands at most 1032:1, and the
gzip ISIZE trailer gives the uncompressed size mod 2^32), and the affine must be finite and non-singular with
positive voxel spacing. A 66-byte ``.nii.gz`` whose header claims 2048 x 2048 x 1024 voxels is refused in
microseconds instead of allocating 8 GiB.

Example::

    >>> img = read_nifti("imagesTr/img0001.nii.gz")          # NiftiVolume(data (X, Y, Z) float32, affine, header)
    >>> write_nifti("pred.nii.gz", mask.astype("uint8"), img.affine, img.header)
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple, Union

import numpy as np

from engine.errors import UserError
from engine.io import atomic_write_bytes

__all__ = [
    "NiftiVolume", "read_nifti", "read_nifti_header", "check_volume_header", "header_problem", "affine_problem",
    "max_voxels", "MAX_VOXELS", "write_nifti", "check_pair", "read_image2d", "IMAGE2D_SUFFIXES", "NIFTI_SUFFIXES",
    "nifti_inputs", "nifti_stem",
]

PathLike = Union[str, os.PathLike]
IMAGE2D_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_LEVEL = 1  # nibabel's own default for .nii.gz
MAX_VOXELS = 2**31  # voxels one volume may claim (a 1290^3 CT); the VTK_MAX_VOXELS environment variable overrides
_DEFLATE_MAX_RATIO = 1032  # deflate never expands more than ~1032:1 (RFC 1951 bound), so ISIZE-free files are bounded
_GZIP_CHUNK = 1 << 20  # bytes decompressed at a time when a .nii.gz is counted


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


def max_voxels() -> int:
    """The voxel cap: ``VTK_MAX_VOXELS`` when set (a positive integer), else :data:`MAX_VOXELS`."""
    text = os.environ.get("VTK_MAX_VOXELS")
    if text is None or not text.strip():
        return MAX_VOXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"VTK_MAX_VOXELS: expected a positive integer, got {text!r}")
    return value


def check_volume_header(path: PathLike) -> Any:
    """Open ``path`` lazily and validate its header before any voxel is read; return the nibabel image.

    Raises:
        UserError: naming the file: missing, unreadable, bad dimensions, more voxels than :func:`max_voxels`
            or than the file can hold, or an unusable affine (see :func:`header_problem`).
    """
    img = read_nifti_header(path)
    problem = header_problem(img, path)
    if problem:
        raise UserError(f"{Path(path)}: {problem}")
    return img


def header_problem(img: Any, path: PathLike) -> Optional[str]:
    """What is wrong with a lazily loaded NIfTI header (``None`` when nothing is), reading no voxel data."""
    shape = tuple(int(d) for d in img.shape)
    if not shape or min(shape) < 1:
        return f"bad dimensions {shape} in the header"
    dims = "x".join(str(d) for d in shape)
    n = math.prod(shape)
    cap = max_voxels()
    if n > cap:
        return f"header claims {dims} = {n} voxels, over the limit of {cap} (set VTK_MAX_VOXELS to raise it)"
    proxy = img.dataobj
    need = int(getattr(proxy, "offset", 0)) + n * np.dtype(getattr(proxy, "dtype", img.get_data_dtype())).itemsize
    short = _payload_shortfall(Path(path), need)
    if short:
        return f"header claims {dims} voxels of {img.get_data_dtype()} ({need} bytes) but {short} (truncated file " \
               "or a wrong header)"
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # nibabel raises on some corrupt qforms
        return f"unusable affine ({_reason(e)})"
    return affine_problem(affine, _raw_header(Path(path), img), ndim=len(shape))


def _raw_header(path: Path, img: Any) -> Any:
    """The header as stored: nibabel's loader silently replaces a negative or zero ``pixdim`` (abs, or 1)."""
    if int(_field(img.header, "sform_code")) > 0:
        return img.header  # the affine comes from the sform; pixdim is not used
    try:
        with (gzip.open if _is_gzip(path) else open)(path, "rb") as f:
            return type(img.header).from_fileobj(f, check=False)
    except Exception:  # noqa: BLE001 - nibabel read it once already; fall back to its (fixed) copy
        return img.header


def affine_problem(affine: np.ndarray, header: Any = None, ndim: int = 3) -> Optional[str]:
    """Why ``affine`` (4, 4) cannot place voxels in space, or ``None``: non-finite, a zero-length or negative
    voxel axis, or singular (parallel axes). ``header`` adds its ``pixdim`` when no sform overrides it."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        return "non-finite affine (NaN/inf in the header's sform/qform)"
    k = max(1, min(3, ndim))
    rot = a[:3, :k]  # (3, k): one column per voxel axis present
    spacing = np.sqrt((rot ** 2).sum(0))
    if (spacing <= 0).any():
        return f"affine has a zero-length voxel axis (spacing {_fmt_vec(spacing)} mm; zero or empty sform/qform)"
    if header is not None and int(_field(header, "sform_code")) == 0:  # the affine comes from pixdim
        pixdim = np.asarray(_field(header, "pixdim"), dtype=np.float64)[1:1 + k]
        if not np.isfinite(pixdim).all() or (pixdim <= 0).any():
            return f"voxel spacing (pixdim) {_fmt_vec(pixdim)} must be positive"
    # volume spanned by the unit voxel axes: 1 for orthogonal axes, ~0 when two of them are parallel
    unit = rot / spacing
    spread = abs(float(np.linalg.det(unit))) if k == 3 else float(np.linalg.norm(np.cross(*unit.T))) if k == 2 else 1.0
    if spread <= 1e-6:
        return f"singular affine (two voxel axes point the same way; spread {spread:.3g})"
    return None


def _field(header: Any, name: str) -> Any:
    try:
        return header[name]
    except (KeyError, ValueError, TypeError):
        return 0 if name.endswith("_code") else np.ones(8)


def _fmt_vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(x):g}" for x in v) + ")"


def _payload_shortfall(path: Path, need: int) -> Optional[str]:
    """``None`` when ``path`` holds (or, for gzip, decompresses to) at least ``need`` bytes, else what it holds.

    A ``.nii.gz`` is first bounded by deflate's maximum ratio, then by its ISIZE trailer (the last member's
    uncompressed size mod 2^32); only when the trailer is smaller than ``need`` (multi-member files, or sizes
    over 4 GiB) is the stream counted, a chunk at a time, never holding more than :data:`_GZIP_CHUNK` bytes.
    """
    size = path.stat().st_size
    if not _is_gzip(path):
        return None if size >= need else f"the file has {size} bytes"
    if size * _DEFLATE_MAX_RATIO + 1024 < need:
        return f"the {size}-byte gzip file can hold at most {size * _DEFLATE_MAX_RATIO} bytes"
    if need < 2**32 and size >= 18:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", f.read(4))
        if isize >= need:
            return None
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while total < need:
                chunk = f.read(_GZIP_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        return f"the gzip stream ends after {total} bytes ({_reason(e)})"
    return None if total >= need else f"the file decompresses to {total} bytes"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def read_nifti_header(path: PathLike) -> Any:
    """Open ``path`` lazily and return the nibabel image (header and affine only; voxels are not read)."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    try:
        with _quiet_nibabel():  # its "pixdim ... setting to abs" lines; header_problem reports those itself
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
    img = check_volume_header(path)
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


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-fix log lines (it logs and repairs; vtk reports problems in one line instead)."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 10)
    try:
        yield
    finally:
        logger.setLevel(level)


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

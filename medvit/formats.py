"""Volume formats users have: NIfTI, NRRD, MetaImage (MHA/MHD) and DICOM series folders, in and out.

Every reader returns a :class:`Volume` (a :class:`medvit.io.NiftiVolume`): ``data`` (X, Y, Z) float32 in the
file's own voxel order and a RAS ``affine`` (NIfTI's world convention; NRRD/MetaImage/DICOM store LPS, which is
converted by flipping the first two world axes), so inference is the same for every format and
:func:`write_mask` writes the mask back in the input's grid: NIfTI for NIfTI and DICOM inputs, NRRD (same space,
directions and origin) for NRRD, MHA (same origin, spacing and direction) for MHA/MHD.

Dependencies, chosen for their install story: ``pynrrd`` (pure Python) for NRRD, ``SimpleITK`` for MetaImage
(binary wheels for Linux, macOS and Windows on every supported Python, nothing to compile) and ``pydicom`` (pure
Python) for DICOM, whose series checks need the per-file tags anyway.

Bad input is one line naming the file (``UserError``, exit 2): a DICOM folder with several series (listed;
``series=`` picks one), missing or duplicated slices, non-uniform slice spacing, a DICOM file without pixel
data, a detached-header NRRD whose data file is missing, a MetaImage whose header and data disagree in size.

Example::

    >>> vol = read_volume("ct.nrrd")                         # or a .mha, .nii.gz, or a DICOM series folder
    >>> write_mask("preds", output_stem("ct.nrrd"), vol, mask)   # preds/ct_seg.nrrd in ct.nrrd's grid
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from engine.errors import UserError
from engine.io import atomic_write_bytes
from medvit.io import NIFTI_SUFFIXES, NiftiVolume, nifti_stem, read_nifti, write_nifti

__all__ = ["Volume", "VOLUME_SUFFIXES", "volume_format", "volume_inputs", "read_volume", "write_mask",
           "write_probabilities", "output_stem", "is_dicom_folder", "read_dicom_series", "write_dicom_series",
           "read_nrrd", "read_metaimage", "lps_to_ras"]

PathLike = Union[str, os.PathLike]
NRRD_SUFFIXES = (".nrrd", ".nhdr")
META_SUFFIXES = (".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + META_SUFFIXES
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS (its own inverse)


@dataclass
class Volume(NiftiVolume):
    """A :class:`~medvit.io.NiftiVolume` that remembers its format (``nifti``, ``nrrd``, ``metaimage``,
    ``dicom``) and what writing a mask back needs (``meta``: the NRRD header, the MetaImage geometry)."""

    fmt: str = "nifti"
    meta: Any = None


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """An LPS voxel-to-world affine as RAS (the same matrix converts back)."""
    return _LPS @ np.asarray(affine, dtype=np.float64)


# ------------------------------------------------------------------------------------------------- dispatch
def volume_format(path: PathLike) -> str:
    """``nifti``, ``nrrd``, ``metaimage`` or ``dicom`` (a folder of DICOM files, or one ``.dcm``)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    if name.endswith(META_SUFFIXES):
        return "metaimage"
    if name.endswith(".dcm") or _has_dicm_magic(p):
        return "dicom"
    raise UserError(f"{p}: unknown volume format (expected {', '.join(VOLUME_SUFFIXES)} or a DICOM series folder)")


def _has_dicm_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_folder(folder: PathLike) -> bool:
    """Whether ``folder`` directly holds DICOM files (``.dcm`` or the ``DICM`` preamble)."""
    p = Path(folder)
    return p.is_dir() and any(f.is_file() and (f.name.lower().endswith(".dcm") or _has_dicm_magic(f))
                              for f in p.iterdir() if not f.name.startswith("."))


def volume_inputs(path: PathLike) -> List[Path]:
    """``path`` itself (a volume file or a DICOM series folder), or the sorted volume files and DICOM series
    sub-folders of a folder; ``UserError`` when there are none."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found")
    if p.is_file() or is_dicom_folder(p):
        return [p]
    found = sorted(f for f in p.iterdir() if not f.name.startswith(".") and (
        (f.is_file() and f.name.lower().endswith(VOLUME_SUFFIXES)) or is_dicom_folder(f)))
    if not found:
        raise UserError(f"{p}: no {'/'.join(VOLUME_SUFFIXES)} files or DICOM series folders")
    return found


def output_stem(path: PathLike) -> str:
    """``ct`` for ``ct.nii.gz``, ``ct.nrrd``, ``ct.mha``; the folder name for a DICOM series folder."""
    p = Path(path)
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        return nifti_stem(p)
    return p.name if p.is_dir() else p.stem


def read_volume(path: PathLike, *, series: Optional[str] = None) -> Volume:
    """Read any supported volume (see the module docstring); ``series`` picks a DICOM series by UID."""
    fmt = volume_format(path)
    if series is not None and fmt != "dicom":
        raise UserError(f"--series {series}: {path} is not a DICOM series")
    if fmt == "nifti":
        v = read_nifti(path)
        return Volume(v.path, v.data, v.affine, v.header, "nifti", None)
    if fmt == "nrrd":
        return read_nrrd(path)
    if fmt == "metaimage":
        return read_metaimage(path)
    return read_dicom_series(path, series=series)


def _check_finite(p: Path, data: np.ndarray) -> np.ndarray:
    if data.ndim != 3:
        raise UserError(f"{p}: expected a 3D volume, got shape {tuple(data.shape)}")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise UserError(f"{p}: {bad} NaN/inf voxels")
    return data


def _atomic_via(path: Path, write: Callable[[str], None]) -> Path:
    """Let a library write to a temporary path (it needs a file name), then move the bytes atomically."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        f = os.path.join(tmp, path.name)
        write(f)
        return atomic_write_bytes(path, Path(f).read_bytes())


# ----------------------------------------------------------------------------------------------------- NRRD
_SPACES = {"left-posterior-superior": "LPS", "right-anterior-superior": "RAS", "left-anterior-superior": "LAS",
           "lps": "LPS", "ras": "RAS", "las": "LAS", "scanner-xyz": "RAS", "3d-right-handed": "RAS"}


def _nrrd_affine(header: Dict[str, Any], p: Path) -> np.ndarray:
    """The RAS affine of a 3D NRRD header (``space directions`` columns, ``space origin``, ``space``)."""
    aff = np.eye(4)
    dirs = header.get("space directions")
    if dirs is not None:
        rows = [np.asarray(d, dtype=np.float64) for d in dirs if d is not None and not np.all(np.isnan(d))]
        if len(rows) != 3:
            raise UserError(f"{p}: NRRD 'space directions' has {len(rows)} spatial axes, expected 3")
        aff[:3, :3] = np.stack(rows, axis=1)  # column i: world step of voxel axis i
    elif header.get("spacings") is not None:
        aff[:3, :3] = np.diag([float(s) for s in header["spacings"]][:3])
    if header.get("space origin") is not None:
        aff[:3, 3] = np.asarray(header["space origin"], dtype=np.float64)
    space = _SPACES.get(str(header.get("space", "RAS")).lower(), "RAS")
    flip = np.diag([-1.0 if space[0] == "L" else 1.0, -1.0 if space[1] == "P" else 1.0, 1.0, 1.0])
    return flip @ aff


def read_nrrd(path: PathLike) -> Volume:
    """Read a ``.nrrd`` (attached) or ``.nhdr`` (detached header) 3D volume with pynrrd."""
    import nrrd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    try:
        header = nrrd.read_header(str(p))
    except Exception as e:
        raise UserError(f"{p}: unreadable NRRD header ({_reason(e)})") from None
    data_file = header.get("data file") or header.get("datafile")
    if data_file and not str(data_file).startswith("LIST") and "%" not in str(data_file):
        df = Path(data_file) if Path(data_file).is_absolute() else p.parent / data_file
        if not df.is_file():
            raise UserError(f"{p}: detached-header NRRD: its data file {data_file} ({df}) is missing")
    try:
        data, header = nrrd.read(str(p))
    except Exception as e:
        raise UserError(f"{p}: truncated or corrupt NRRD ({_reason(e)})") from None
    data = _check_finite(p, np.asarray(data).astype(np.float32))
    return Volume(p, data, _nrrd_affine(header, p), None, "nrrd", dict(header))


def _write_nrrd(path: Path, mask: np.ndarray, header: Dict[str, Any]) -> Path:
    import nrrd

    keep = ("space", "space directions", "space origin", "kinds", "space units", "measurement frame")
    hdr = {k: v for k, v in header.items() if k in keep}
    hdr.update({"type": "uint8", "encoding": "gzip", "dimension": 3})
    return _atomic_via(path, lambda f: nrrd.write(f, np.asarray(mask, np.uint8), hdr))


# ------------------------------------------------------------------------------------------------ MetaImage
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _meta_header(p: Path) -> Tuple[Dict[str, str], int]:
    """The ``Key = Value`` header of a MetaImage file and the byte offset where its data start."""
    fields: Dict[str, str] = {}
    offset = 0
    with open(p, "rb") as f:
        for raw in f:
            offset += len(raw)
            line = raw.decode("latin-1").strip()
            if "=" not in line:
                if line:
                    raise UserError(f"{p}: not a MetaImage header (line {line[:40]!r})")
                continue
            key, value = (s.strip() for s in line.split("=", 1))
            fields[key] = value
            if key == "ElementDataFile":
                break
            if offset > 1 << 16:
                break
    if "ElementDataFile" not in fields or "DimSize" not in fields:
        raise UserError(f"{p}: MetaImage header lacks DimSize or ElementDataFile")
    return fields, offset


def check_metaimage(path: PathLike) -> None:
    """Raise ``UserError`` when a MetaImage's header and data disagree in size (or its data file is missing)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    h, offset = _meta_header(p)
    if h.get("CompressedData", "False").lower() == "true":
        return  # the size check happens when the stream is decompressed
    dims = [int(v) for v in h["DimSize"].split()]
    chans = int(h.get("ElementNumberOfChannels", "1"))
    etype = h.get("ElementType", "")
    if etype not in _MET_BYTES:
        raise UserError(f"{p}: MetaImage ElementType {etype!r} is not one of {', '.join(_MET_BYTES)}")
    want = int(np.prod(dims)) * chans * _MET_BYTES[etype]
    name = h["ElementDataFile"]
    if name.upper() == "LOCAL":
        have = p.stat().st_size - offset
        where = "after the header"
    else:
        if name.upper().startswith("LIST") or "%" in name:
            return
        df = p.parent / name
        if not df.is_file():
            raise UserError(f"{p}: MetaImage data file {name} ({df}) is missing")
        have, where = df.stat().st_size - int(h.get("HeaderSize", "0") or 0), f"in {name}"
    if have != want:
        raise UserError(f"{p}: MetaImage header says DimSize {' x '.join(map(str, dims))} of {etype} "
                        f"({want} bytes) but there are {have} bytes of data {where}")


def read_metaimage(path: PathLike) -> Volume:
    """Read a ``.mha``/``.mhd`` 3D volume with SimpleITK (after :func:`check_metaimage`)."""
    import SimpleITK as sitk

    p = Path(path)
    check_metaimage(p)
    try:
        img = sitk.ReadImage(str(p))
    except Exception as e:
        raise UserError(f"{p}: unreadable MetaImage ({_reason(e)})") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{p}: expected a 3D single-channel volume, got {img.GetDimension()}D with "
                        f"{img.GetNumberOfComponentsPerPixel()} channel(s)")
    data = _check_finite(p, sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32))  # (Z,Y,X)->(X,Y,Z)
    geo = dict(spacing=img.GetSpacing(), origin=img.GetOrigin(), direction=img.GetDirection())
    return Volume(p, np.ascontiguousarray(data), lps_to_ras(_lps_affine(**geo)), None, "metaimage", geo)


def _lps_affine(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    aff[:3, 3] = origin
    return aff


def _write_metaimage(path: Path, mask: np.ndarray, geo: Dict[str, Any]) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(mask, np.uint8).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(v) for v in geo["spacing"]))
    img.SetOrigin(tuple(float(v) for v in geo["origin"]))
    img.SetDirection(tuple(float(v) for v in geo["direction"]))
    return _atomic_via(path, lambda f: sitk.WriteImage(img, f, True))


# ---------------------------------------------------------------------------------------------------- DICOM
def _dicom_files(folder: Path) -> List[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def _series_of(folder: Path) -> Dict[str, List[Tuple[Path, Any]]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: Dict[str, List[Tuple[Path, Any]]] = {}
    for f in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(str(f))
        except InvalidDicomError:
            continue  # DICOMDIR-less folders often hold a README or a thumbnail
        except Exception as e:
            raise UserError(f"{f}: unreadable DICOM ({_reason(e)})") from None
        groups.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append((f, ds))
    if not groups:
        raise UserError(f"{folder}: no DICOM files")
    return groups


def _series_line(uid: str, items: List[Tuple[Path, Any]]) -> str:
    ds = items[0][1]
    desc = str(ds.get("SeriesDescription", "") or ds.get("Modality", "")).strip()
    return f"{uid} ({desc + ', ' if desc else ''}{len(items)} files)"


def read_dicom_series(path: PathLike, *, series: Optional[str] = None) -> Volume:
    """Read one DICOM series (a folder, or the folder of one ``.dcm`` file) into a RAS volume.

    Slices are ordered by ``ImagePositionPatient`` along the slice normal (the cross product of the
    ``ImageOrientationPatient`` row and column directions); values are ``pixel * RescaleSlope +
    RescaleIntercept``.

    Raises:
        UserError: several series and no ``series`` (they are listed), an unknown ``series``, a file of the
            series without pixel data, missing or duplicated slices, non-uniform slice spacing, slices that
            differ in orientation or size.
    """
    from engine.choices import check_choice

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    groups = _series_of(folder)
    if series is None:
        if len(groups) > 1:
            listed = "; ".join(_series_line(u, it) for u, it in sorted(groups.items()))
            raise UserError(f"{folder}: {len(groups)} DICOM series; pick one with --series UID: {listed}")
        series = next(iter(groups))
    check_choice("--series", series, sorted(groups), what="series UID in " + str(folder))
    items = groups[series]
    for f, ds in items:
        if "PixelData" not in ds:
            raise UserError(f"{f}: DICOM file has no pixel data")
    slices = _ordered_slices(folder, items)
    return _stack(folder, slices)


def _geometry(f: Path, ds) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        ps = np.asarray([float(v) for v in ds.PixelSpacing], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{f}: DICOM file lacks ImageOrientationPatient/ImagePositionPatient/PixelSpacing") from None
    return iop, ipp, ps


def _ordered_slices(folder: Path, items: List[Tuple[Path, Any]]) -> List[Tuple[Path, Any, float]]:
    iop0, _, ps0 = _geometry(*items[0])
    normal = np.cross(iop0[:3], iop0[3:])
    out = []
    for f, ds in items:
        iop, ipp, ps = _geometry(f, ds)
        if not np.allclose(iop, iop0, atol=1e-4) or not np.allclose(ps, ps0, atol=1e-4):
            raise UserError(f"{f}: slice orientation/pixel spacing differs from {items[0][0].name} in the series")
        if (int(ds.Rows), int(ds.Columns)) != (int(items[0][1].Rows), int(items[0][1].Columns)):
            raise UserError(f"{f}: {ds.Rows}x{ds.Columns} pixels, {items[0][0].name} has "
                            f"{items[0][1].Rows}x{items[0][1].Columns}")
        out.append((f, ds, float(ipp @ normal)))
    out.sort(key=lambda t: t[2])
    if len(out) < 2:
        return out
    pos = np.array([t[2] for t in out])
    gaps = np.diff(pos)
    for i, g in enumerate(gaps):
        if g < 1e-3:
            raise UserError(f"{folder}: duplicated slice at {pos[i]:.3f} mm along the slice normal "
                            f"({out[i][0].name} and {out[i + 1][0].name})")
    step = float(np.median(gaps))
    for i, g in enumerate(gaps):
        if g > 1.5 * step:
            n = int(round(g / step)) - 1
            raise UserError(f"{folder}: {n} missing slice(s) between {out[i][0].name} and {out[i + 1][0].name} "
                            f"(gap {g:.3f} mm, slice spacing {step:.3f} mm)")
    if gaps.max() - gaps.min() > max(1e-3, 0.01 * step):
        raise UserError(f"{folder}: non-uniform slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm)")
    return out


def _stack(folder: Path, slices: List[Tuple[Path, Any, float]]) -> Volume:
    planes = []
    for f, ds, _ in slices:
        try:
            arr = ds.pixel_array.astype(np.float32)  # (rows, cols) = (Y, X)
        except Exception as e:
            raise UserError(f"{f}: cannot decode the pixel data ({_reason(e)})") from None
        if arr.ndim != 2:
            raise UserError(f"{f}: expected a single-frame 2D slice, got pixel data of shape {arr.shape}")
        slope, inter = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        planes.append(arr.T * slope + inter)  # (X, Y)
    data = np.stack(planes, axis=-1)  # (X, Y, Z)
    iop, ipp0, ps = _geometry(slices[0][0], slices[0][1])
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * ps[1]  # along a row: column index increases, step = column spacing
    aff[:3, 1] = iop[3:] * ps[0]  # down a column: row index increases, step = row spacing
    if len(slices) > 1:
        ipp1 = _geometry(slices[-1][0], slices[-1][1])[1]
        aff[:3, 2] = (ipp1 - ipp0) / (len(slices) - 1)
    else:
        aff[:3, 2] = np.cross(iop[:3], iop[3:]) * float(slices[0][1].get("SliceThickness", 1.0) or 1.0)
    aff[:3, 3] = ipp0
    meta = dict(series=str(slices[0][1].get("SeriesInstanceUID", "")), files=[str(t[0]) for t in slices])
    return Volume(folder, _check_finite(folder, data), lps_to_ras(aff), None, "dicom", meta)


def write_dicom_series(folder: PathLike, data: np.ndarray, affine: np.ndarray, *, series_uid: Optional[str] = None,
                       description: str = "vtk", modality: str = "CT") -> List[Path]:
    """Write ``data`` (X, Y, Z) with a RAS ``affine`` as a DICOM series (one int16 CT slice per file).

    Used to make test series and to hand volumes to DICOM viewers; ``read_dicom_series`` reads it back with the
    same grid. The affine's in-plane columns must be orthogonal (a DICOM slice is a rectangular grid).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = lps_to_ras(affine)
    ps = np.sqrt((lps[:3, :3] ** 2).sum(0))
    row, col = lps[:3, 0] / ps[0], lps[:3, 1] / ps[1]
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    vals = np.rint(data).astype(np.int16)
    out = []
    for z in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        f = folder / f"slice{z:04d}.dcm"
        ds = FileDataset(str(f), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.Modality, ds.SeriesDescription, ds.InstanceNumber = modality, description, z + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [float(v) for v in lps[:3, :3] @ np.array([0.0, 0.0, z]) + lps[:3, 3]]
        ds.PixelSpacing = [float(ps[1]), float(ps[0])]  # row spacing, column spacing
        ds.SliceThickness = float(ps[2])
        ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(vals[:, :, z].T).tobytes()  # (rows, cols) = (Y, X)
        ds.save_as(str(f), enforce_file_format=True)
        out.append(f)
    return out


# --------------------------------------------------------------------------------------------------- writing
def mask_path(out: PathLike, stem: str, vol: Volume) -> Path:
    """``out/<stem>_seg`` + ``.nrrd`` (NRRD input), ``.mha`` (MHA/MHD input) or ``.nii.gz`` (NIfTI, DICOM)."""
    ext = {"nrrd": ".nrrd", "metaimage": ".mha"}.get(getattr(vol, "fmt", "nifti"), ".nii.gz")
    return Path(out) / f"{stem}_seg{ext}"


def write_mask(out: PathLike, stem: str, vol: NiftiVolume, mask: np.ndarray) -> Path:
    """Write ``mask`` (X, Y, Z) uint8 in ``vol``'s grid and format family (see :func:`mask_path`)."""
    dst = mask_path(out, stem, vol)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fmt = getattr(vol, "fmt", "nifti")
    if fmt == "nrrd":
        return _write_nrrd(dst, mask, vol.meta)
    if fmt == "metaimage":
        return _write_metaimage(dst, mask, vol.meta)
    return write_nifti(dst, np.asarray(mask, np.uint8), vol.affine, vol.header)


def write_probabilities(out: PathLike, stem: str, vol: NiftiVolume, probs: np.ndarray, fmt: str = "npz",
                        names: Optional[Sequence[str]] = None) -> Path:
    """Write class probabilities (K, X, Y, Z) in ``vol``'s voxel grid.

    ``npz``: ``<stem>_probs.npz`` with ``probabilities`` (K, X, Y, Z) float16, ``affine`` (RAS, 4 x 4) and
    ``names``. ``nifti``: ``<stem>_probs.nii.gz``, (X, Y, Z, K) uint16 with ``scl_slope``/``scl_inter`` (NIfTI has no
    float16; about 1/65535 resolution), which nibabel and ITK read back as float probabilities.
    """
    import io as _io

    out = Path(out)
    if fmt == "npz":
        buf = _io.BytesIO()
        np.savez_compressed(buf, probabilities=probs.astype(np.float16), affine=np.asarray(vol.affine),
                            names=np.asarray(list(names or []), dtype=str))
        return atomic_write_bytes(out / f"{stem}_probs.npz", buf.getvalue())
    if fmt != "nifti":
        raise ValueError(f"probability format {fmt!r}: expected npz or nifti")
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(np.moveaxis(np.clip(probs.astype(np.float32), 0, 1), 0, -1), vol.affine)
    img.set_data_dtype(np.uint16)  # nibabel picks scl_slope/scl_inter so [0, 1] fills the uint16 range
    img.set_qform(vol.affine, code=1)
    img.set_sform(vol.affine, code=1)
    return atomic_write_bytes(out / f"{stem}_probs.nii.gz", gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split())[:160] or type(e).__name__


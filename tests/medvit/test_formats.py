"""NRRD, MetaImage and DICOM series in, masks out in the input's grid (and format for NRRD/MHA), and one-line exit-2
errors for the broken inputs users meet. Every format is checked against the same volume written as NIfTI: the
same world grid must give the same mask voxel for voxel (the tiny model is random, so not mirror-symmetric)."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cli.main import main
from medvit.formats import read_volume, write_dicom_series
from medvit.io import write_nifti

pytestmark = pytest.mark.usefixtures("tiny_seg_models")  # tests/medvit/conftest.py

COLIN = Path(__file__).resolve().parents[2] / "medvit/assets/colin27/imagesTr/img0001.nii.gz"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _checkpoint(path):
    """A ``tiny_seg3d`` checkpoint with random weights, 3 mm spacing, intensities 0..255."""
    import medvit
    from engine.checkpoint import save_weights, serialize_weights
    from engine.config import TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(task="seg", model="tiny_seg3d", model_args=dict(num_classes=3, in_chans=1, img_size=16),
                      data_args=dict(spatial_dims=3, roi=[32, 32, 32], spacing=[3.0, 3.0, 3.0], a_min=0.0,
                                     a_max=255.0, names=["background", "a", "b"]))
    model = medvit.create_model("tiny_seg3d", **cfg.model_args)  # registered by the tiny_seg_models fixture
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return save_weights(path, serialize_weights(model, cfg, 1))


@pytest.fixture
def ckpt(tmp_path):
    return _checkpoint(tmp_path / "model.safetensors")


def _predict(ckpt, inp, out, *extra):
    return main(["seg", "predict", "--checkpoint", str(ckpt), "--input", str(inp), "--out", str(out), "--device",
                 "cpu", "--no-overlay", *extra])


def _colin_oblique():
    """Colin27's voxels with permuted, flipped axes (a non-identity direction) and an offset origin."""
    data = np.asarray(nib.load(str(COLIN)).dataobj).astype(np.int16).transpose(2, 0, 1)[:, ::-1]  # (Z, X, -Y)
    ras = np.array([[0.0, 3.0, 0.0, -89.0], [0.0, 0.0, -3.0, 92.0], [3.0, 0.0, 0.0, -70.0], [0, 0, 0, 1.0]])
    return np.ascontiguousarray(data), ras


def _nifti_reference(ckpt, tmp_path, data, ras):
    write_nifti(tmp_path / "ref_in" / "ref.nii.gz", data.astype(np.float32), ras)
    assert _predict(ckpt, tmp_path / "ref_in", tmp_path / "ref_out") == 0
    mask = np.asarray(nib.load(str(tmp_path / "ref_out/ref_seg.nii.gz")).dataobj)
    assert len(np.unique(mask)) > 1  # the reference is not trivially empty
    return mask


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vtk: error: "), err
    return err[0]


# ----------------------------------------------------------------------------------------------------- NRRD
def test_nrrd_predicts_in_its_own_grid_and_format(ckpt, tmp_path):
    import nrrd

    data, ras = _colin_oblique()
    lps = LPS @ ras
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3],
              "kinds": ["domain"] * 3, "encoding": "gzip"}
    src = tmp_path / "in" / "brain.nrrd"
    src.parent.mkdir()
    nrrd.write(str(src), data, header)
    vol = read_volume(src)
    np.testing.assert_allclose(vol.affine, ras)
    np.testing.assert_array_equal(vol.data, data)
    assert _predict(ckpt, src.parent, tmp_path / "out") == 0
    mask, mhdr = nrrd.read(str(tmp_path / "out/brain_seg.nrrd"))
    assert mask.dtype == np.uint8 and mask.shape == data.shape
    np.testing.assert_allclose(mhdr["space directions"], header["space directions"])
    np.testing.assert_allclose(mhdr["space origin"], header["space origin"])
    assert mhdr["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(mask, _nifti_reference(ckpt, tmp_path, data, ras))


def test_detached_nrrd_reads_and_a_missing_data_file_is_one_line(ckpt, tmp_path, capsys):
    import nrrd

    data, ras = _colin_oblique()
    lps = LPS @ ras
    hdr = tmp_path / "in" / "scan.nhdr"
    hdr.parent.mkdir()
    nrrd.write(str(hdr), data, {"space": "LPS", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]},
               detached_header=True)
    np.testing.assert_allclose(read_volume(hdr).affine, ras)
    assert _predict(ckpt, hdr, tmp_path / "out") == 0 and (tmp_path / "out/scan_seg.nrrd").is_file()
    capsys.readouterr()
    for f in hdr.parent.iterdir():
        if f != hdr:
            f.unlink()  # the .raw data file
    assert _predict(ckpt, hdr, tmp_path / "out2") == 2
    line = _one_error_line(capsys)
    assert str(hdr) in line and "data file" in line and "missing" in line


# ------------------------------------------------------------------------------------------------ MetaImage
def _sitk_image(data, ras):
    import SimpleITK as sitk

    lps = LPS @ ras
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(tuple(spacing))
    img.SetDirection(tuple((lps[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(lps[:3, 3]))
    return img


def test_mha_predicts_in_its_own_grid_and_format(ckpt, tmp_path):
    import SimpleITK as sitk

    data, ras = _colin_oblique()
    src = tmp_path / "in" / "brain.mha"
    src.parent.mkdir()
    img = _sitk_image(data, ras)
    sitk.WriteImage(img, str(src), True)
    np.testing.assert_allclose(read_volume(src).affine, ras, atol=1e-6)
    assert _predict(ckpt, src.parent, tmp_path / "out") == 0
    out = sitk.ReadImage(str(tmp_path / "out/brain_seg.mha"))
    np.testing.assert_allclose(out.GetSpacing(), img.GetSpacing())
    np.testing.assert_allclose(out.GetOrigin(), img.GetOrigin())
    np.testing.assert_allclose(out.GetDirection(), img.GetDirection())
    mask = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    np.testing.assert_array_equal(mask, _nifti_reference(ckpt, tmp_path, data, ras))


def test_metaimage_size_mismatch_and_missing_raw_are_one_line(ckpt, tmp_path, capsys):
    import SimpleITK as sitk

    data, ras = _colin_oblique()
    (tmp_path / "in").mkdir()
    mha = tmp_path / "in" / "short.mha"
    sitk.WriteImage(_sitk_image(data, ras), str(mha), False)  # uncompressed
    mha.write_bytes(mha.read_bytes()[:-1000])
    assert _predict(ckpt, mha, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert str(mha) in line and "header says DimSize" in line and "bytes" in line
    mhd = tmp_path / "in" / "split.mhd"
    sitk.WriteImage(_sitk_image(data, ras), str(mhd), False)
    (tmp_path / "in" / "split.raw").unlink()
    assert _predict(ckpt, mhd, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert str(mhd) in line and "split.raw" in line and "missing" in line


# ---------------------------------------------------------------------------------------------------- DICOM
def _ct():
    """A CT-like int16 volume in LPS axial order (voxel axes L, P, S), 0.9 x 0.9 x 2.5 mm, offset origin."""
    data, _ = _colin_oblique()
    data = data[:, :, 10:22]  # (61, 61, 12)
    ras = np.array([[-0.9, 0.0, 0.0, 30.0], [0.0, -0.9, 0.0, 40.0], [0.0, 0.0, 2.5, -100.0], [0, 0, 0, 1.0]])
    return np.ascontiguousarray(data), ras


def test_dicom_series_written_by_pydicom_predicts_in_its_grid(ckpt, tmp_path):
    data, ras = _ct()
    series = tmp_path / "in" / "ct_series"
    files = write_dicom_series(series, data, ras)
    assert len(files) == data.shape[2]
    vol = read_volume(series)
    np.testing.assert_allclose(vol.affine, ras, atol=1e-6)
    np.testing.assert_array_equal(vol.data, data)
    assert _predict(ckpt, tmp_path / "in", tmp_path / "out") == 0  # a folder holding a series sub-folder
    seg = nib.load(str(tmp_path / "out/ct_series_seg.nii.gz"))
    assert seg.shape == data.shape and np.allclose(seg.affine, ras, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), _nifti_reference(ckpt, tmp_path, data, ras))


def _series(tmp_path, name="s"):
    data, ras = _ct()
    folder = tmp_path / name
    write_dicom_series(folder, data, ras, series_uid=f"1.2.826.0.1.{len(name)}")
    return folder


def test_two_series_are_listed_and_series_picks_one(ckpt, tmp_path, capsys):
    a = _series(tmp_path, "a")
    b = _series(tmp_path, "bb")
    for f in b.iterdir():
        shutil.copy(f, a / f"b_{f.name}")
    assert _predict(ckpt, a, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert str(a) in line and "2 DICOM series" in line and "1.2.826.0.1.1 " in line and "1.2.826.0.1.2 " in line
    assert _predict(ckpt, a, tmp_path / "out", "--series", "1.2.826.0.1.2") == 0
    assert (tmp_path / "out/a_seg.nii.gz").is_file()


def _drop_middle(folder):
    sorted(folder.iterdir())[5].unlink()
    return "missing slice"


def _duplicate(folder):
    f = sorted(folder.iterdir())[5]
    shutil.copy(f, folder / "copy.dcm")
    return "duplicated slice"


def _shift(folder):
    import pydicom

    f = sorted(folder.iterdir())[5]
    ds = pydicom.dcmread(str(f))
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 0.6]
    ds.save_as(str(f))
    return "non-uniform slice spacing"


def _no_pixels(folder):
    import pydicom

    f = sorted(folder.iterdir())[3]
    ds = pydicom.dcmread(str(f))
    del ds.PixelData
    ds.save_as(str(f))
    return f"{f}: DICOM file has no pixel data"


@pytest.mark.parametrize("plant", [_drop_middle, _duplicate, _shift, _no_pixels])
def test_broken_dicom_series_is_one_line_exit_2(plant, ckpt, tmp_path, capsys):
    folder = _series(tmp_path)
    what = plant(folder)
    assert _predict(ckpt, folder, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert what in line and str(folder) in line
    assert not (tmp_path / "out" / "s_seg.nii.gz").exists()

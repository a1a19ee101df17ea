"""Each bad input stops `vtk seg train` before training with exit 2 and one line naming the file."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from cli.main import main

pytestmark = pytest.mark.usefixtures("tiny_seg_models")  # tests/medvit/conftest.py


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _truncate(root):
    f = root / "imagesTr/img0001.nii.gz"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    return "img0001.nii.gz"


def _shape_mismatch(root):
    img = nib.load(str(root / "imagesTr/img0002.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), img.affine), str(root / "labelsTr/label0002.nii.gz"))
    return "label0002.nii.gz"


def _affine_mismatch(root):
    lab = nib.load(str(root / "labelsTr/label0003.nii.gz"))
    aff = lab.affine.copy()
    aff[:3, :3] *= 1.5
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), aff), str(root / "labelsTr/label0003.nii.gz"))
    return "label0003.nii.gz"


def _flat_2d(root):
    img = nib.load(str(root / "imagesTr/img0001.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), img.affine), str(root / "imagesTr/img0001.nii.gz"))
    return "img0001.nii.gz"


def _nan_voxels(root):
    img = nib.load(str(root / "imagesTr/img0004.nii.gz"))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(root / "imagesTr/img0004.nii.gz"))
    return "img0004.nii.gz"


def _missing_entry(root):
    meta = json.loads((root / "dataset_0.json").read_text())
    meta["training"].append({"image": "imagesTr/img0099.nii.gz", "label": "labelsTr/label0099.nii.gz"})
    (root / "dataset_0.json").write_text(json.dumps(meta))
    return "img0099.nii.gz"


@pytest.mark.parametrize("plant", [_truncate, _shape_mismatch, _affine_mismatch, _flat_2d, _nan_voxels,
                                   _missing_entry])
def test_bad_input_exit_2_names_file(plant, synth_dir, tmp_path, capsys):
    root = _copy(synth_dir, tmp_path / "data")
    name = plant(root)
    out = tmp_path / "run"
    rc = main(["seg", "train", "--model", "tiny_seg3d", "--data", "btcv", "--data-dir", str(root), "--max-steps",
               "2", "--out", str(out), "--img-size", "16", "--device", "cpu", "--num-workers", "0", "--quiet",
               "--data-arg", "spacing=[12,12,12]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("vtk: error: ") and name in err[0], err
    assert not (out / "checkpoints").exists()  # stopped before the first step


def test_2d_images_given_to_a_3d_model(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for sub in ("img", "labelcol"):
            (tmp_path / split / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / split / "img" / "a.png")
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / split / "labelcol" / "a.png")
    rc = main(["seg", "train", "--model", "tiny_seg3d", "--data", "folder2d", "--data-dir", str(tmp_path),
               "--max-steps", "1", "--out", str(tmp_path / "run"), "--device", "cpu", "--num-workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "3D model" in err and str(tmp_path) in err


@pytest.mark.parametrize("model,size", [("medt", "32"), ("swin_unetr", "32")])
def test_bad_model_option_is_a_user_error(model, size, synth_dir, tmp_path, capsys):
    """A model override the architecture cannot take exits 2 with one line naming the model, before training."""
    rc = main(["seg", "train", "--model", model, "--img-size", size, "--data", "btcv", "--data-dir", str(synth_dir),
               "--max-steps", "1", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith(f"vtk: error: --model {model}:") and "img_size" in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())

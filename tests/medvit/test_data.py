"""Data layouts round trip, synthetic BTCV, ``vtk data check btcv`` catching each planted problem."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cli.main import main
from engine.errors import UserError
from medvit.data import (BTCV_LABELS, SYNAPSE_FROM_BTCV, folder2d_pairs, load_datalist, nifti_folder_pairs,
                         remap_labels, resolve_splits)
from medvit.data.synth import ORGANS
from medvit.io import read_nifti


def test_synth_layout_and_anatomy(synth_dir):
    meta = json.loads((synth_dir / "dataset_0.json").read_text())
    for key in ("description", "labels", "licence", "modality", "name", "numTest", "numTraining", "reference",
                "release", "tensorImageSize", "test", "training", "validation"):
        assert key in meta
    assert meta["training"][0] == {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    assert meta["test"] == ["imagesTs/img0005.nii.gz"]
    img = read_nifti(synth_dir / "imagesTr/img0001.nii.gz")
    lab = read_nifti(synth_dir / "labelsTr/label0001.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and img.spacing[2] > 1.2 * img.spacing[0]
    assert img.data.min() < -900 and set(np.unique(lab.data).astype(int)) <= set(range(14))
    # anatomy: liver (6) lies on the patient's right (+x in RAS world), spleen (1) on the left
    world = lambda c: (img.affine @ np.r_[np.argwhere(lab.data == c).mean(0), 1.0])[0]  # noqa: E731
    assert world(6) > 0 > world(1)
    assert abs(img.data[lab.data == 6].mean() - ORGANS[6][2]) < 25


def test_layouts_round_trip(synth_dir, tmp_path):
    train = load_datalist(synth_dir / "dataset_0.json", "training")
    val = load_datalist(synth_dir / "dataset_0.json", "validation")
    pairs = nifti_folder_pairs(synth_dir)
    assert [p["image"] for p in pairs] == [e["image"] for e in train + val]
    assert [p["label"] for p in pairs] == [e["label"] for e in train + val]
    assert resolve_splits("btcv", synth_dir) == (train, val)
    tr, va = resolve_splits("folder", synth_dir, val_fraction=0.25)
    assert len(tr) == 3 and va == pairs[-1:]
    lab = np.arange(14)
    assert remap_labels(lab, SYNAPSE_FROM_BTCV).tolist() == [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0]
    assert len(BTCV_LABELS) == 14 and BTCV_LABELS[6] == "liver"


def test_folder2d_pairs_png_bmp_tif(tmp_path):
    for sub in ("img", "labelcol"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    for i, ext in enumerate((".png", ".bmp", ".tif")):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "img" / f"c{i}{ext}")
        Image.fromarray((rng.random((20, 24)) > 0.5).astype(np.uint8) * 255).save(tmp_path / "labelcol" / f"c{i}.png")
    pairs = folder2d_pairs(tmp_path)
    assert [p["image"].rsplit(".", 1)[1] for p in pairs] == ["png", "bmp", "tif"]
    from medvit.io import read_image2d

    m = read_image2d(pairs[0]["label"], mask=True)
    assert m.dtype == np.int64 and set(np.unique(m)) == {0, 1}
    assert read_image2d(pairs[1]["image"]).shape == (3, 20, 24)


def test_missing_datalist_entry_names_file(synth_dir, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    (root / "labelsTr/label0002.nii.gz").unlink()
    with pytest.raises(UserError, match="label0002.nii.gz"):
        load_datalist(root / "dataset_0.json")


def _plant(root):
    """One problem per file; returns the expected (file, words) pairs."""
    (root / "labelsTr/label0001.nii.gz").unlink()  # missing
    raw = (root / "imagesTr/img0002.nii.gz").read_bytes()
    (root / "imagesTr/img0002.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated
    img3 = nib.load(str(root / "imagesTr/img0003.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), img3.affine), str(root / "labelsTr/label0003.nii.gz"))
    lab4 = nib.load(str(root / "labelsTr/label0004.nii.gz"))
    data = np.asarray(lab4.dataobj).copy()
    data[0, 0, 0] = 20
    nib.save(nib.Nifti1Image(data, lab4.affine), str(root / "labelsTr/label0004.nii.gz"))
    (root / "imagesTs/img0005.nii.gz").write_bytes(b"not a nifti")
    return [("labelsTr/label0001.nii.gz", "missing"), ("imagesTr/img0002.nii.gz", "truncated"),
            ("labelsTr/label0003.nii.gz", "shape"), ("labelsTr/label0004.nii.gz", "outside 0..13"),
            ("imagesTs/img0005.nii.gz", "unreadable")]


def test_check_clean_then_every_planted_problem(synth_dir, tmp_path, capsys):
    assert main(["data", "check", "btcv", "--data-dir", str(synth_dir)]) == 0
    assert "no problems" in capsys.readouterr().out
    root = tmp_path / "bad"
    shutil.copytree(synth_dir, root)
    expected = _plant(root)
    assert main(["data", "check", "btcv", "--data-dir", str(root)]) == 2
    out = capsys.readouterr().out
    lines = out.splitlines()
    for f, words in expected:
        assert any(f in line and words in line for line in lines), (f, words, out)
    assert "5 problem(s)" in out


def test_check_affine_mismatch(synth_dir, tmp_path, capsys):
    root = tmp_path / "aff"
    shutil.copytree(synth_dir, root)
    lab = nib.load(str(root / "labelsTr/label0001.nii.gz"))
    aff = lab.affine.copy()
    aff[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), aff), str(root / "labelsTr/label0001.nii.gz"))
    assert main(["data", "check", "btcv", "--data-dir", str(root)]) == 2
    assert "affine" in capsys.readouterr().out


def _tiny_pair(tmp_path):
    """A 24^3 volume: class 1 fills half of it, class 2 is one 2^3 cube in a corner."""
    lab = np.zeros((24, 24, 24), np.float32)
    lab[:, :, 12:] = 1
    lab[1:3, 1:3, 1:3] = 2
    img = 10.0 + 100.0 * lab
    paths = {}
    for key, arr in (("image", img), ("label", lab)):
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(arr, np.eye(4)), paths[key])
    return paths


def test_class_balanced_crops_hit_small_class(tmp_path):
    from medvit.data.transforms import LoadNiftid, train_transforms_3d

    item = _tiny_pair(tmp_path)
    args = dict(spacing=(1, 1, 1), a_min=0, a_max=255, num_samples=4, flip_prob=0, rot90_prob=0, shift_prob=0)
    crops = train_transforms_3d((8, 8, 8), LoadNiftid(num_classes=3), crop="classes", ratios=[0, 0, 1], **args)
    crops.set_random_state(0)
    out = crops(item)
    assert len(out) == 4 and all(tuple(c["label"].shape) == (1, 8, 8, 8) for c in out)
    assert all((c["label"] == 2).any() for c in out)
    posneg = train_transforms_3d((8, 8, 8), LoadNiftid(num_classes=3), **args)
    posneg.set_random_state(0)
    hits = [bool((c["label"] == 2).any()) for _ in range(5) for c in posneg(item)]
    assert not all(hits)  # the default recipe rarely centres on an 8-voxel structure
    with pytest.raises(UserError, match="ratios"):
        train_transforms_3d((8, 8, 8), LoadNiftid(num_classes=3), crop="classes", ratios=[1, 1], **args)
    with pytest.raises(UserError, match="crop=grid"):
        train_transforms_3d((8, 8, 8), LoadNiftid(num_classes=3), crop="grid", **args)


def test_loss_class_weights_and_batch_dice():
    from types import SimpleNamespace

    import torch

    from medvit.task import SegTask

    cfg = SimpleNamespace(data_args={"class_weights": [1, 1, 4], "dice_batch": True}, model_args={"num_classes": 3})
    task = SegTask()
    args = task._loss_args(cfg)
    assert args["batch"] is True and args["weight"].tolist() == [1.0, 1.0, 4.0]
    logits = torch.zeros(2, 3, 4, 4, 4)
    logits[:, 1] = 5.0  # predicts class 1 everywhere; the missed class 2 costs more with weight 4
    label = torch.ones(2, 1, 4, 4, 4, dtype=torch.long)
    label[:, :, :2] = 2
    plain = SegTask()
    plain_cfg = SimpleNamespace(data_args={}, model_args={"num_classes": 3})
    ctx = SimpleNamespace(autocast=lambda: torch.autocast("cpu", enabled=False), cfg=cfg)
    plain_ctx = SimpleNamespace(autocast=ctx.autocast, cfg=plain_cfg)
    ident = torch.nn.Identity()
    assert task.training_step(ident, (logits, label), ctx)[0] > plain.training_step(ident, (logits, label),
                                                                                    plain_ctx)[0]
    bad = SegTask()
    with pytest.raises(UserError, match="class_weights"):
        bad._loss_args(SimpleNamespace(data_args={"class_weights": [1, 2]}, model_args={"num_classes": 3}))


@pytest.mark.parametrize("key", ["affine_prob", "noise_prob", "blur_prob", "contrast_prob", "gamma_prob"])
def test_each_augmentation_changes_the_crop(tmp_path, key):
    from medvit.data.transforms import LoadNiftid, train_transforms_3d

    item = _tiny_pair(tmp_path)
    ramp = 10.0 + 100.0 * nib.load(item["label"]).get_fdata() + np.arange(24.0)[:, None, None]  # not 2-valued
    nib.save(nib.Nifti1Image(ramp.astype(np.float32), np.eye(4)), item["image"])
    args = dict(spacing=(1, 1, 1), a_min=0, a_max=255, num_samples=1, flip_prob=0, rot90_prob=0, shift_prob=0,
                normalization="none", crop="classes", ratios=[0, 1, 1])
    plain = train_transforms_3d((8, 8, 8), LoadNiftid(num_classes=3), **args)
    aug = train_transforms_3d((8, 8, 8), LoadNiftid(num_classes=3), **args, **{key: 1.0})
    assert len(aug.transforms) == len(plain.transforms) + 1  # exactly one step added, none when the prob is 0
    plain.set_random_state(0)
    aug.set_random_state(0)
    a, b = plain(item)[0], aug(item)[0]
    assert a["image"].shape == b["image"].shape
    assert not np.allclose(np.asarray(a["image"]), np.asarray(b["image"]))
    if key == "affine_prob":  # spatial: the label moves with the image
        assert not np.array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
    else:  # intensity only
        assert np.array_equal(np.asarray(a["label"]), np.asarray(b["label"]))


def test_augmentation_data_args_are_checked():
    from medvit.recipes import check_data_args

    check_data_args({"gamma_prob": 0.3, "affine_prob": 0.2, "rotate": 15, "scale": 0.2, "translate": 8})
    for bad, word in (({"gamma_prob": 1.5}, "probability"), ({"rotate": -1}, "degrees"), ({"scale": 1.2}, "fraction"),
                      ({"translate": -2}, "voxels")):
        with pytest.raises(UserError, match=word):
            check_data_args(bad)

"""nnU-Net-style training pieces: the K-fold split, CT/MR normalisation on the foreground, the dataset fingerprint."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cli.main import main
from engine.errors import UserError
from medvit.data.fingerprint import dataset_fingerprint
from medvit.data.folds import fold_items, kfold_splits
from medvit.data.transforms import (Normalized, ct_normalize, foreground_stats, mr_normalize, normalize_image,
                                    resolve_normalization)

IDS = [f"case_{i:03d}" for i in range(13)]


# ----------------------------------------------------------------------------------------------------- folds
def test_kfold_is_disjoint_covering_and_deterministic():
    splits = kfold_splits(IDS, 5)
    vals = [s["val"] for s in splits]
    assert sorted(sum(vals, [])) == IDS  # every case validated exactly once
    assert [len(v) for v in vals] == [3, 3, 3, 2, 2]
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and sorted(s["train"] + s["val"]) == IDS
    assert kfold_splits(list(reversed(IDS)), 5) == splits  # by case id, not input order
    assert kfold_splits(IDS, 5, seed=1) != splits


def test_kfold_matches_nnunet_sklearn_procedure():
    """nnU-Net's generate_crossval_split: KFold(5, shuffle=True, random_state=12345) over the sorted ids."""
    sklearn_model_selection = pytest.importorskip("sklearn.model_selection")
    keys = np.sort(np.array(IDS))
    ref = [{"train": list(keys[tr]), "val": list(keys[te])}
           for tr, te in sklearn_model_selection.KFold(5, shuffle=True, random_state=12345).split(keys)]
    assert kfold_splits(IDS, 5) == ref


def test_fold_items_bad_fold_and_duplicates():
    items = [{"image": f"/d/{c}_0000.nii.gz", "label": f"/d/{c}.nii.gz"} for c in IDS[:4]]
    train, val, _ = fold_items(items, 2, 1)
    assert len(train) == 2 and len(val) == 2 and not {i["label"] for i in train} & {i["label"] for i in val}
    with pytest.raises(UserError, match="--fold 2: must be in 0..1"):
        fold_items(items, 2, 2)
    with pytest.raises(UserError, match="--folds 5"):
        fold_items(items, 5, 0)
    with pytest.raises(UserError, match="appears twice"):
        fold_items(items + items[:1], 2, 0)


# ------------------------------------------------------------------------------------------- normalisation
def _ct_case(rng):
    """Air -1000 (half the volume), soft tissue 40 +- 20, a labelled organ 100 +- 15 with a few 3000 HU outliers."""
    img = np.full((20, 20, 20), -1000.0)
    img[:, 10:] = rng.normal(40, 20, (20, 10, 20))
    lab = np.zeros(img.shape, np.int64)
    lab[4:12, 12:18, 4:12] = 1
    img[lab == 1] = rng.normal(100, 15, int(lab.sum()))
    img[5, 13, 5] = img[6, 13, 5] = 3000.0
    return img.astype(np.float32), lab


def test_ct_statistics_are_the_foregrounds_and_normalisation_matches_nnunet():
    img, lab = _ct_case(np.random.default_rng(0))
    fg = img[lab > 0].astype(np.float64)
    stats = foreground_stats(fg)
    assert stats["mean"] == pytest.approx(fg.mean()) and stats["std"] == pytest.approx(fg.std())
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert 80 < stats["mean"] < 140  # the organ's, not the air's (-500 over the whole volume)
    out = ct_normalize(img, stats)
    ref = (np.clip(img, np.percentile(fg, 0.5), np.percentile(fg, 99.5)) - fg.mean()) / fg.std()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert out.max() < 10  # the 3000 HU outliers are clipped to the 99.5 percentile
    same = normalize_image(img, {"normalization": "ct", "intensity_stats": stats})
    np.testing.assert_array_equal(same, out)


def test_mr_zscore_inside_the_nonzero_foreground():
    rng = np.random.default_rng(1)
    img = np.zeros((16, 16, 16), np.float32)
    img[3:13, 3:13, 3:13] = rng.normal(300, 50, (10, 10, 10))
    img[8, 8, 8] = 0.0  # a hole inside the head: foreground (nnU-Net fills holes)
    out = mr_normalize(img)
    inside = np.zeros(img.shape, bool)
    inside[3:13, 3:13, 3:13] = True
    vals = img[inside].astype(np.float64)
    np.testing.assert_allclose(out[inside], (vals - vals.mean()) / vals.std(), rtol=1e-4, atol=1e-5)
    assert np.all(out[~inside] == 0)
    assert out[inside].mean() == pytest.approx(0, abs=1e-5) and out[inside].std() == pytest.approx(1, abs=1e-4)
    # a whole-image z-score would differ: the background zeros would count
    assert abs(((img - img.mean()) / img.std())[inside].mean()) > 0.5


def test_normalized_transform_keeps_meta_and_works_channelwise():
    from monai.data import MetaTensor
    import torch

    img = np.zeros((1, 8, 8, 8), np.float32)
    img[0, 2:6, 2:6, 2:6] = np.arange(64, dtype=np.float32).reshape(4, 4, 4) + 10
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    out = Normalized("mr")({"image": MetaTensor(torch.from_numpy(img), affine=affine)})["image"]
    assert torch.equal(out.affine, affine)
    np.testing.assert_allclose(out.numpy()[0], mr_normalize(img[0]), atol=1e-6)


def test_resolve_normalization_from_modality_and_bad_choice():
    assert resolve_normalization("auto", "CT") == "ct"
    assert resolve_normalization("auto", "MRI T1") == "mr" and resolve_normalization("auto", "FLAIR") == "mr"
    assert resolve_normalization("auto", None) == "window"
    assert resolve_normalization("ct", "MRI") == "ct"
    with pytest.raises(UserError, match="normalization: 'cta' .*one of auto, ct, mr, window, none; did you mean ct"):
        resolve_normalization("cta", None)


# --------------------------------------------------------------------------------------------- fingerprint
def _write_case(root, name, img, lab, affine):
    nib.save(nib.Nifti1Image(img, affine), str(root / "imagesTr" / f"{name}_0000.nii.gz"))
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), affine), str(root / "labelsTr" / f"{name}.nii.gz"))


def test_fingerprint_on_a_dataset_with_known_spacing(tmp_path, capsys):
    d = tmp_path / "Dataset007_Known"
    (d / "imagesTr").mkdir(parents=True)
    (d / "labelsTr").mkdir()
    rng = np.random.default_rng(2)
    spacings = [(0.8, 0.8, 5.0), (0.7, 0.7, 4.0), (0.9, 0.9, 6.0)]
    values = []
    for i, sp in enumerate(spacings):
        img, lab = _ct_case(rng)
        img, lab = img[:, :, : 12 + 2 * i], lab[:, :, : 12 + 2 * i]  # z size 12, 14, 16
        values.append(img[lab > 0])
        affine = np.diag(list(sp) + [1.0])
        if i == 1:  # stored as (z, y, x) voxel order: the fingerprint reports RAS (x, y, z)
            img, lab = img.transpose(2, 1, 0), lab.transpose(2, 1, 0)
            affine = np.array([[0, 0, sp[0], 0], [0, sp[1], 0, 0], [sp[2], 0, 0, 0], [0, 0, 0, 1.0]])
        _write_case(d, f"c{i}", img, lab, affine)
    (d / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "o": 1},
                                                "numTraining": 3, "file_ending": ".nii.gz"}))
    fp = dataset_fingerprint(d)
    assert fp["kind"] == "nnunet" and fp["num_cases"] == 3
    assert fp["spacing"]["median"] == pytest.approx([0.8, 0.8, 5.0])
    assert fp["shape"]["median"] == [20, 20, 14] and fp["shape"]["min"] == [20, 20, 12]
    ref = foreground_stats(np.concatenate(values))
    for k in ("mean", "std", "percentile_00_5", "percentile_99_5", "min", "max"):
        assert fp["intensity"][k] == pytest.approx(ref[k], rel=1e-5)
    sg = fp["suggested"]
    # anisotropic (5.0 > 3 x 0.8, 14 x 3 < 20 is false -> not anisotropic by nnU-Net's size rule): median kept
    assert sg["spacing"] == pytest.approx([0.8, 0.8, 5.0]) and sg["anisotropic"] is False
    assert sg["normalization"] == "ct" and sg["roi"] == [16, 16, 16] and sg["roi_edge"] == 32
    out = tmp_path / "fp.json"
    assert main(["data", "fingerprint", str(d), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "spacing (mm)   median 0.80 x 0.80 x 5.00" in text and "normalization=ct" in text
    assert json.loads(out.read_text())["intensity"]["mean"] == pytest.approx(ref["mean"], rel=1e-5)


def test_fingerprint_anisotropic_uses_the_10th_percentile(tmp_path):
    d = tmp_path / "aniso"
    (d / "imagesTr").mkdir(parents=True)
    (d / "labelsTr").mkdir()
    rng = np.random.default_rng(3)
    zs = [3.0, 4.0, 5.0, 6.0, 7.0]
    for i, z in enumerate(zs):
        img = rng.normal(100, 10, (64, 64, 8)).astype(np.float32)
        lab = np.zeros(img.shape, np.uint8)
        lab[20:40, 20:40, 2:6] = 1
        affine = np.diag([0.5, 0.5, z, 1.0])
        nib.save(nib.Nifti1Image(img, affine), str(d / "imagesTr" / f"img{i:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(d / "labelsTr" / f"label{i:04d}.nii.gz"))
    fp = dataset_fingerprint(d, "folder")
    assert fp["suggested"]["anisotropic"] is True
    assert fp["suggested"]["spacing"] == pytest.approx([0.5, 0.5, np.percentile(zs, 10)])
    assert fp["suggested"]["normalization"] == "mr"  # no modality, intensities not HU-like


def test_fingerprint_bad_dir_is_a_user_error(tmp_path, capsys):
    assert main(["data", "fingerprint", str(tmp_path / "nope")]) == 2
    assert "data directory not found" in capsys.readouterr().err


def test_prediction_replays_the_normalisation():
    """predict_volume feeds the network the run's normalisation of the image (not the a_min/a_max window)."""
    import torch

    from medvit.inference import predict_volume
    from medvit.io import NiftiVolume

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):  # (B, 1, D, H, W) -> 2 classes
            seen.append(x.detach().clone())
            return torch.zeros((x.shape[0], 2) + tuple(x.shape[2:]))

    img, lab = _ct_case(np.random.default_rng(4))
    vol = NiftiVolume(path=None, data=img, affine=np.eye(4), header=None)
    stats = foreground_stats(img[lab > 0])
    for scheme, ref in (("ct", ct_normalize(img, stats)), ("mr", mr_normalize(img)), (None, None)):
        seen.clear()
        predict_volume(Probe(), vol, spatial_dims=3, spacing=(1.0, 1.0, 1.0), a_min=-175.0, a_max=250.0,
                       roi=(20, 20, 20), device=torch.device("cpu"), overlap=0.0, normalization=scheme,
                       intensity_stats=stats)
        x = seen[0][0, 0].numpy()
        if ref is None:  # the paper recipes' window
            ref = np.clip((img + 175.0) / 425.0, 0, 1)
        np.testing.assert_allclose(x, ref, atol=1e-4)

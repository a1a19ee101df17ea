"""``--data nnunet``: the nnU-Net v2 raw layout is read, bad layouts are refused naming the file, and a synthetic
raw dataset trains (one fold, CT normalisation) and evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from cli.main import main
from engine.errors import UserError
from medvit.data.folds import kfold_splits
from medvit.data.nnunet import nnunet_items, nnunet_label_names, read_dataset_json


def make_nnunet(root: Path, cases: int = 5, modality: str = "CT", size: int = 20, seed: int = 0) -> Path:
    """A DatasetXXX_Name folder: CT-like volumes (air -1000, body 40 HU, a bright 'organ' 200 HU labelled 1)."""
    rng = np.random.default_rng(seed)
    d = root / "Dataset042_Synth"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    for i in range(cases):
        img = np.full((size,) * 3, -1000.0, np.float32)
        img[2:-2, 2:-2, 2:-2] = 40.0
        lab = np.zeros((size,) * 3, np.uint8)
        c = rng.integers(6, size - 6, 3)
        lab[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
        img[lab == 1] = 200.0
        img += rng.normal(0, 10, img.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(img, affine), str(d / "imagesTr" / f"case_{i:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(d / "labelsTr" / f"case_{i:03d}.nii.gz"))
    nib.save(nib.Nifti1Image(img, affine), str(d / "imagesTs" / "test_000_0000.nii.gz"))
    meta = {"channel_names": {"0": modality}, "labels": {"background": 0, "organ": 1}, "numTraining": cases,
            "file_ending": ".nii.gz", "name": "Synth"}
    (d / "dataset.json").write_text(json.dumps(meta))
    return d


def test_items_and_labels(tmp_path):
    d = make_nnunet(tmp_path, cases=3)
    items = nnunet_items(d)
    assert [it["case"] for it in items] == ["case_000", "case_001", "case_002"]
    assert all(Path(it["image"]).name == f"{it['case']}_0000.nii.gz" for it in items)
    assert all(Path(it["label"]).name == f"{it['case']}.nii.gz" for it in items)
    assert [it["case"] for it in nnunet_items(d, "test")] == ["test_000"]
    assert nnunet_label_names(d) == ["background", "organ"]


@pytest.mark.parametrize("fault, match", [
    ("two_channels", "2 channels"), ("regions", "region-based"), ("num_training", "numTraining is 9"),
    ("missing_label", "no label case_001.nii.gz"), ("gap_labels", "consecutive"), ("bad_name", "CASE_XXXX"),
    ("no_json", "dataset.json: not found"), ("missing_key", "missing file_ending"),
])
def test_bad_layouts_name_the_file(tmp_path, fault, match):
    d = make_nnunet(tmp_path, cases=3)
    js = d / "dataset.json"
    meta = json.loads(js.read_text())
    if fault == "two_channels":
        meta["channel_names"] = {"0": "T1", "1": "T2"}
    elif fault == "regions":
        meta["labels"] = {"background": 0, "whole": [1, 2]}
    elif fault == "num_training":
        meta["numTraining"] = 9
    elif fault == "gap_labels":
        meta["labels"] = {"background": 0, "organ": 2}
    elif fault == "missing_key":
        del meta["file_ending"]
    js.write_text(json.dumps(meta))
    if fault == "missing_label":
        (d / "labelsTr" / "case_001.nii.gz").unlink()
    elif fault == "bad_name":
        (d / "imagesTr" / "case_000_0000.nii.gz").rename(d / "imagesTr" / "case_000.nii.gz")
    elif fault == "no_json":
        js.unlink()
    with pytest.raises(UserError, match=match):
        read_dataset_json(d)
        nnunet_items(d)


def test_nnunet_trains_one_fold_and_evaluates(tmp_path, tiny_seg_models, capsys):
    d = make_nnunet(tmp_path, cases=5)
    run = tmp_path / "run"
    rc = main(["seg", "train", "--model", "tiny_seg3d", "--data", "nnunet", "--data-dir", str(d), "--out", str(run),
               "--max-steps", "2", "--batch-size", "1", "--img-size", "16", "--num-samples", "1", "--val-every", "2",
               "--ckpt-every", "2", "--device", "cpu", "--num-workers", "0", "--folds", "5", "--fold", "3",
               "--data-arg", "spacing=[2,2,3]", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    da = cfg["data_args"]
    assert da["folds"] == 5 and da["fold"] == 3
    assert da["normalization"] == "ct"  # auto, from channel_names {"0": "CT"}
    assert da["names"] == ["background", "organ"] and cfg["model_args"]["num_classes"] == 2
    splits = json.loads((run / "splits.json").read_text())
    assert splits == kfold_splits([f"case_{i:03d}" for i in range(5)], 5)
    # the CT statistics are those of the 4 training cases' foreground (the organ, ~200 HU), not of the air
    stats = da["intensity_stats"]
    assert 150 < stats["mean"] < 250 and stats["std"] < 30 and stats["percentile_00_5"] > 100
    capsys.readouterr()
    assert main(["seg", "eval", "--checkpoint", str(run), "--device", "cpu", "--sw-batch-size", "2"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert "mean_dice" in json.dumps(metrics)
    scored = (run / "eval" / "per_case.csv").read_text()  # eval scores the run's fold, not the layout's hold-out
    val_cases = splits[3]["val"]
    assert all(f"{c}_0000.nii.gz" in scored for c in val_cases)
    assert sum(f"{c}_0000.nii.gz" in scored for c in [f"case_{i:03d}" for i in range(5)]) == len(val_cases)
    from medvit.inference import Predictor

    pred = Predictor(run, "cpu")  # predict/eval replay the run's CT normalisation and statistics
    assert pred.settings.normalization == "ct" and pred.settings.intensity_stats == stats

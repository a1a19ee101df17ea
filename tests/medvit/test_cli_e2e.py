"""End to end through `cli.main.main`: synth -> train -> eval -> predict, for a 3D model, a 2D model on 3D data
(axial slices, restacked) and a 2D folder dataset."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cli.main import main

pytestmark = pytest.mark.usefixtures("tiny_seg_models")  # tests/medvit/conftest.py

_TRAIN = ["--max-steps", "2", "--val-every", "2", "--device", "cpu", "--num-workers", "0", "--quiet"]


def _train(model, data, data_dir, out, *extra):
    return main(["seg", "train", "--model", model, "--data", data, "--data-dir", str(data_dir), "--out", str(out),
                 *_TRAIN, *extra])


@pytest.mark.parametrize("model,extra", [
    ("tiny_seg3d", ["--img-size", "16", "--data-arg", "spacing=[12,12,12]", "--num-samples", "1"]),
    ("unetr", ["--img-size", "16", "--feature-size", "4", "--model-arg", "embed_dim=32", "--model-arg", "depth=2",
               "--model-arg", "num_heads=2", "--model-arg", "patch_size=8", "--data-arg", "spacing=[12,12,12]",
               "--num-samples", "1"]),
    ("tiny_seg2d", ["--img-size", "24", "--batch-size", "4"]),
])
def test_synth_train_eval_predict(model, extra, tmp_path, capsys):
    data = tmp_path / "btcv"
    assert main(["data", "synth", "btcv", "--out", str(data), "--cases", "3", "--size", "24", "--test-cases", "1"]) == 0
    run = tmp_path / "run"
    assert _train(model, "btcv", data, run, *extra) == 0, capsys.readouterr().err
    cfg_text = (run / "config.yaml").read_text()
    assert "names:" in cfg_text and (run / "checkpoints/best.safetensors").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/dice" in x and "val/dice/liver" in x for x in lines)

    assert main(["seg", "eval", "--checkpoint", str(run), "--device", "cpu", "--sw-batch-size", "2"]) == 0
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert metrics["cases"] == 1 and set(metrics["per_organ"]) == set(json.loads(
        (data / "dataset_0.json").read_text())["labels"].values()) - {"background"}
    assert (run / "eval/per_case.csv").read_text().count("\n") == 1 + 13
    assert (run / "eval/dice_per_organ.png").stat().st_size > 1000

    out = tmp_path / "pred"
    assert main(["seg", "predict", "--checkpoint", str(run / "checkpoints/best.safetensors"), "--input",
                 str(data / "imagesTs"), "--out", str(out), "--device", "cpu"]) == 0
    src, seg = nib.load(str(data / "imagesTs/img0004.nii.gz")), nib.load(str(out / "img0004_seg.nii.gz"))
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    assert np.asarray(seg.dataobj).max() < 14
    assert (out / "img0004_overlay.png").stat().st_size > 1000


def test_folder2d_train_eval(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for sub in ("img", "labelcol"):
            (tmp_path / split / sub).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((40, 36), np.uint8)
            y, x = rng.integers(8, 28, 2)
            mask[y - 6:y + 6, x - 6:x + 6] = 255
            rgb = np.stack([mask // 2 + 40] * 3, -1) + rng.integers(0, 20, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / split / "img" / f"g{i}.bmp")
            Image.fromarray(mask).save(tmp_path / split / "labelcol" / f"g{i}.png")
    run = tmp_path / "run"
    assert _train("tiny_seg2d", "folder2d", tmp_path, run, "--img-size", "32", "--batch-size", "2") == 0, \
        capsys.readouterr().err
    assert "in_chans: 3" in (run / "config.yaml").read_text()
    assert main(["seg", "eval", "--checkpoint", str(run), "--device", "cpu"]) == 0
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert metrics["cases"] == 2 and list(metrics["per_organ"]) == ["class 1"]

"""Issue 10's acceptance: released weights files on the user's commands, against the reference implementations.

- ``vtk seg predict --model unetr --pretrained UNETR.pth --input CT.nii.gz``: a MONAI ``UNETR`` state dict (small
  config); the mask lands in the input's own grid and equals MONAI's ``sliding_window_inference`` with the MONAI
  model on the same preprocessed volume.
- ``vtk video train --model timesformer --pretrained vit.pth``: a timm ViT file; the spatial weights after loading
  equal the file's, the temporal ones are initialised as the official code does, ``pretrained_report.json`` in the
  run folder says which tensors are new, and the run never reads the file again (eval and export after it moved).
- ``vtk video eval --model mvit --pretrained MVIT_B_16x4.pyth`` against pytorchvideo is
  ``tests/videovit/test_pretrained_eval.py::test_eval_from_weights_equals_pytorchvideo`` (per-video probabilities,
  atol 1e-5).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cli.main import main
from vtk_testing import perturb_

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------------------------- MONAI UNETR
UNETR_ARGS = dict(feature_size=8, hidden_size=96, mlp_dim=384, num_heads=4)  # MONAI's names; 12 layers, patch 16
VTK_UNETR = ["--roi", "32", "--model-arg", "embed_dim=96", "--model-arg", "num_heads=4", "--model-arg",
             "feature_size=8", "--precision", "32"]  # parity with MONAI in fp32
SPACING, WINDOW = (1.5, 1.5, 2.0), (-175.0, 250.0)  # the registry protocol of unetr (BTCV)


@pytest.fixture(scope="module")
def monai_unetr():
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    return perturb_(UNETR(in_channels=1, out_channels=3, img_size=32, **UNETR_ARGS), scale=0.1)


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    """A CT-like volume at 0.9 x 1.2 x 3.0 mm (not the model's spacing) with an origin far from 0."""
    rng = np.random.default_rng(0)
    shape = (44, 36, 14)
    ijk = np.indices(shape).astype(np.float32)
    body = ((ijk[0] - 22) / 18) ** 2 + ((ijk[1] - 18) / 14) ** 2 < 1
    data = np.where(body, 40.0 + 200.0 * np.sin(ijk[0] / 3) * np.cos(ijk[1] / 4), -1000.0)
    data = (data + rng.normal(0, 20, shape)).astype(np.float32)
    affine = np.diag([0.9, 1.2, 3.0, 1.0])
    affine[:3, 3] = (-120.0, 80.0, -300.0)
    path = tmp_path_factory.mktemp("ct") / "CT.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _monai_reference(model, path: Path) -> np.ndarray:
    """Window, resample to the protocol spacing, MONAI sliding window (ROI 32, 4 windows a batch, overlap 0.5,
    Gaussian), softmax, class maps back to the input grid, argmax (the input is RAS already)."""
    from monai.inferers import sliding_window_inference

    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    x = torch.from_numpy((np.clip(data, *WINDOW) - WINDOW[0]) / (WINDOW[1] - WINDOW[0]))[None, None]
    shape = [int(round(n * s / t)) for n, s, t in zip(data.shape, spacing, SPACING)]
    x = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)  # (1, 1, 26, 29, 21)
    with torch.no_grad():
        logits = sliding_window_inference(x, (32, 32, 32), 4, model, overlap=0.5, mode="gaussian")
    probs = F.interpolate(logits.softmax(1), size=data.shape, mode="trilinear", align_corners=False)
    return probs.argmax(1)[0].numpy()


def test_seg_predict_monai_unetr_equals_sliding_window_inference(monai_unetr, ct, tmp_path, capsys):
    weights = tmp_path / "UNETR.pth"
    torch.save(monai_unetr.state_dict(), weights)
    out = tmp_path / "preds"
    rc = main(["seg", "predict", "--model", "unetr", "--pretrained", str(weights), "--input", str(ct),
               "--out", str(out), "--device", "cpu", *VTK_UNETR])
    assert rc == 0, capsys.readouterr().err
    assert "monai format, 170 tensors loaded, 0 adapted, 0 new, 0 ignored" in capsys.readouterr().out
    mask_img, ct_img = nib.load(out / "CT_seg.nii.gz"), nib.load(ct)
    assert mask_img.shape == ct_img.shape and np.allclose(mask_img.affine, ct_img.affine)  # the input's grid
    mask = np.asarray(mask_img.dataobj)
    expected = _monai_reference(monai_unetr, ct)
    assert len(np.unique(expected)) == 3  # every class is predicted somewhere: the comparison means something
    np.testing.assert_array_equal(mask, expected)
    assert (out / "CT_overlay.png").is_file()


def test_seg_predict_a_changed_unetr_file_differs(monai_unetr, ct, tmp_path):
    """The comparison above can fail: one tensor of the file changed gives another mask."""
    sd = {k: v.clone() for k, v in monai_unetr.state_dict().items()}
    key = next(k for k in sd if k.endswith("out.conv.conv.bias"))
    sd[key] += torch.tensor([0.0, 0.5, -0.5])
    weights = tmp_path / "UNETR.pth"
    torch.save(sd, weights)
    assert main(["seg", "predict", "--model", "unetr", "--pretrained", str(weights), "--input", str(ct),
                 "--out", str(tmp_path / "p"), "--device", "cpu", "--no-overlay", *VTK_UNETR]) == 0
    mask = np.asarray(nib.load(tmp_path / "p" / "CT_seg.nii.gz").dataobj)
    assert (mask != _monai_reference(monai_unetr, ct)).mean() > 0.01


# ------------------------------------------------------------------------------------ timm ViT -> TimeSformer
VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
TSF = ["--img-size", "32", "--patch-size", "8", "--model-arg", "embed_dim=64", "--model-arg", "depth=2",
       "--model-arg", "num_heads=4", "--num-frames", "4"]


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> Path:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = perturb_(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000, **VIT), scale=0.1)
    path = tmp_path_factory.mktemp("vit") / "vit_small_test.pth"
    torch.save(vit.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def motion(tmp_path_factory) -> Path:
    """3 motion classes x 4 train (1 val) videos of 12 frames at 32x32."""
    from videovit.data.synth import SynthSpec, write_kinetics_synth

    out = tmp_path_factory.mktemp("motion")
    write_kinetics_synth(out, SynthSpec(classes=3, videos_per_class=4, frames=12, size=32, seed=0))
    return out


def _new_keys(depth: int) -> set:
    temporal = [f"blocks.{i}.temporal_{n}" for i in range(depth) for n in (
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "fc.weight", "fc.bias")]
    return {"time_embed", "head.weight", "head.bias", *temporal}


def test_timesformer_from_timm_vit_keeps_the_spatial_weights(vit_file):
    import videovit

    sd = torch.load(vit_file, weights_only=True)
    from engine.pretrained import create_with_report

    model, report = create_with_report(videovit.create_model, "timesformer",
                                       dict(num_classes=3, num_frames=4, **VIT), str(vit_file))
    ours = model.state_dict()
    spatial = [k for k in sd if not k.startswith("head.")]
    for k in spatial:
        torch.testing.assert_close(ours[k], sd[k], rtol=0, atol=0, msg=k)  # bit for bit
    for i in range(2):  # official init: temporal attention copied from the spatial one, zero temporal_fc
        p = f"blocks.{i}."
        torch.testing.assert_close(ours[p + "temporal_attn.qkv.weight"], sd[p + "attn.qkv.weight"], rtol=0, atol=0)
        assert not ours[p + "temporal_fc.weight"].any() and not ours[p + "temporal_fc.bias"].any()
    assert not ours["time_embed"].any()
    record = report.to_dict()
    assert set(record["new"]) == _new_keys(2)
    assert set(record["loaded"]) == set(spatial)
    assert set(record["ignored"]) == {"head.weight (1000, 64)", "head.bias (1000,)"}  # the file's 1000-way head


def test_video_train_with_pretrained_stores_what_it_needs(vit_file, motion, tmp_path, capsys):
    """The run keeps the report, path and SHA-256; eval and export work after the file moved."""
    run = tmp_path / "tsf"
    rc = main(["video", "train", "--model", "timesformer", "--pretrained", str(vit_file), "--data", "kinetics400",
               "--data-dir", str(motion), "--max-steps", "1", "--batch-size", "4", "--lr", "1e-12",
               "--warmup-steps", "0", "--num-workers", "0", "--device", "cpu", "--precision", "32", "--quiet",
               "--out", str(run), *TSF])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "vtk: pretrained: loaded" in text and "new (made from the checkpoint by the model)" in text
    report = json.loads((run / "pretrained_report.json").read_text())
    assert set(report["new"]) == _new_keys(2)
    from engine.pretrained import sha256_file

    assert report["sha256"] == sha256_file(vit_file) and report["counts"]["new"] == len(_new_keys(2))
    cfg_text = (run / "config.yaml").read_text()
    assert str(vit_file) in cfg_text and sha256_file(vit_file) in cfg_text  # provenance

    from engine import load_run

    _, weights = load_run(run)
    sd = torch.load(vit_file, weights_only=True)
    torch.testing.assert_close(weights["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"], atol=1e-9,
                               rtol=0)  # trained 1 step at lr 1e-12: the file's weights

    moved = vit_file.with_name("elsewhere.pth")
    shutil.move(str(vit_file), str(moved))
    try:
        ev = tmp_path / "ev"
        assert main(["video", "eval", "--checkpoint", str(run), "--num-workers", "0", "--device", "cpu",
                     "--out", str(ev)]) == 0, capsys.readouterr().err
        assert (ev / "metrics.json").is_file()
        exported = tmp_path / "tsf.pt"
        assert main(["models", "export", "--checkpoint", str(run), "--out", str(exported), "--format",
                     "torchscript"]) == 0, capsys.readouterr().err
        assert exported.is_file()
    finally:
        shutil.move(str(moved), str(vit_file))


def test_seg_train_with_pretrained_then_eval_after_the_file_moved(monai_unetr, tmp_path, capsys):
    """A MONAI UNETR file fine-tuned on the shipped Colin27 case (5 classes, so its 3-class head is new); the run
    keeps the report and evaluates after the file moved."""
    from medvit.quickstart import COLIN27

    weights = tmp_path / "UNETR.pth"
    torch.save(monai_unetr.state_dict(), weights)
    run = tmp_path / "ft"
    rc = main(["seg", "train", "--model", "unetr", "--pretrained", str(weights), "--data", "decathlon",
               "--data-dir", str(COLIN27), "--max-steps", "1", "--num-samples", "1", "--num-workers", "0",
               "--device", "cpu", "--quiet", "--out", str(run), "--data-arg", "spacing=[3,3,3]", *VTK_UNETR])
    assert rc == 0, capsys.readouterr().err
    assert "vtk: pretrained: loaded 168 tensors" in capsys.readouterr().out
    report = json.loads((run / "pretrained_report.json").read_text())
    assert set(report["new"]) == {"out.conv.conv.weight", "out.conv.conv.bias"}  # the classifier, new
    assert sorted(report["ignored"]) == ["out.conv.conv.bias (3,)", "out.conv.conv.weight (3, 8, 1, 1, 1)"]
    moved = weights.with_name("moved.pth")
    shutil.move(str(weights), str(moved))
    out = tmp_path / "ev"
    assert main(["seg", "eval", "--checkpoint", str(run), "--device", "cpu", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["cases"] == 1

"""nnU-Net-style inference: mirroring TTA, largest-component postprocessing, saved probabilities, ensembles, the
stitch device and memory estimate, window counting for the progress bar, and GlaS object metrics. Every test
compares against an independent reference computed here and fails when the feature is broken or absent."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medvit.data.transforms import from_ras, to_ras
from medvit.inference import (Predictor, Settings, count_windows, flip_sets, predict_files, segment_volume,
                              sliding_window_probs, Member, _resolve_stitch)
from medvit.io import NiftiVolume, write_nifti

ROI = (16, 16, 16)


class Asym3d(nn.Module):
    """A random 3D conv net: its output is not mirror-symmetric, so TTA changes it."""

    spatial_dims = 3

    def __init__(self, seed=0, k=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1, self.c2 = nn.Conv3d(1, 6, 3, padding=1), nn.Conv3d(6, k, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)  # soft (unsaturated) softmax
        self.calls = 0

    def forward(self, x):  # (B, 1, D, H, W) -> (B, K, D, H, W)
        self.calls += 1
        return self.c2(torch.relu(self.c1(x)))


class Asym2d(nn.Module):
    spatial_dims = 2

    def __init__(self, seed=0, k=2, in_chans=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c = nn.Conv2d(in_chans, k, 5, padding=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.c(x)


def _pred(model, **kw):
    proto = dict(spatial_dims=3, roi=ROI, num_classes=3, spacing=(1.0, 1.0, 1.0), a_min=0.0, a_max=1.0)
    proto.update(kw)
    return Predictor.from_model(model, **proto)


def _volume(shape=(20, 22, 18), seed=0, affine=None):
    rng = np.random.default_rng(seed)
    data = rng.random(shape).astype(np.float32)
    return NiftiVolume(None, data, np.eye(4) if affine is None else affine, None)


def _plain_probs(model, data):
    x = torch.from_numpy(data)[None, None]
    return sliding_window_probs(model, x, ROI, 4, 0.5, "gaussian")[0].numpy()  # (K, X, Y, Z)


# ------------------------------------------------------------------------------------------------------ TTA
def test_tta_is_the_mean_of_the_flipped_predictions():
    model, vol = Asym3d(), _volume()
    x = torch.from_numpy(vol.data)[None, None]
    ref = torch.stack([sliding_window_probs(model, x.flip(a) if a else x, ROI, 4, 0.5, "gaussian").flip(a)
                       if a else sliding_window_probs(model, x, ROI, 4, 0.5, "gaussian")
                       for a in flip_sets(3)]).mean(0)[0].numpy()
    got = _pred(model, tta=True).predict(vol, probabilities=True).probs.astype(np.float32)
    plain = _plain_probs(model, vol.data)
    assert len(flip_sets(3)) == 8 and len(set(flip_sets(3))) == 8
    np.testing.assert_allclose(got, ref, atol=2e-3)
    assert np.abs(got - plain).max() > 0.05  # TTA really changed the output
    no_tta = _pred(model).predict(vol, probabilities=True).probs.astype(np.float32)
    np.testing.assert_allclose(no_tta, plain, atol=2e-3)


def test_tta_2d_uses_the_four_in_plane_flips():
    model = Asym2d()
    img = np.random.default_rng(1).random((1, 24, 20)).astype(np.float32)
    pred = _pred(model, spatial_dims=2, roi=(24, 20), num_classes=2, tta=True)
    mask, probs = pred.predict_image2d(img, probabilities=True)
    x = torch.from_numpy(img)[None]
    with torch.no_grad():
        ref = torch.stack([torch.softmax(model(x.flip(a) if a else x), 1).flip(a) if a else
                           torch.softmax(model(x), 1) for a in flip_sets(2)]).mean(0)[0].numpy()
    assert len(flip_sets(2)) == 4
    np.testing.assert_allclose(probs.astype(np.float32), ref, atol=2e-3)
    np.testing.assert_array_equal(mask, ref.argmax(0))


# --------------------------------------------------------------------------------------------- ensembles
def test_ensemble_is_the_mean_of_the_members_probabilities():
    a, b, vol = Asym3d(seed=1), Asym3d(seed=2), _volume(seed=3)
    pa = _pred(a).predict(vol, probabilities=True).probs.astype(np.float32)
    pb = _pred(b).predict(vol, probabilities=True).probs.astype(np.float32)
    ens = Predictor.ensemble([_pred(a), _pred(b)])
    got = ens.predict(vol, probabilities=True)
    assert len(ens.members) == 2
    np.testing.assert_allclose(got.probs.astype(np.float32), (pa + pb) / 2, atol=2e-3)
    assert np.abs(pa - pb).max() > 0.1  # the members really differ
    mean = (pa + pb) / 2
    top2 = np.sort(mean, 0)[-2:]
    clear = top2[1] - top2[0] > 1e-2  # away from ties at float16 precision
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(got.mask[clear], mean.argmax(0)[clear])


def test_ensemble_members_must_share_the_preprocessing():
    from engine.errors import UserError

    with pytest.raises(UserError, match="ensemble members must share a_max"):
        Predictor.ensemble([_pred(Asym3d()), _pred(Asym3d(), a_max=2.0)])


def _checkpoint(path, model_seed, **data_args):
    """A vtk .safetensors checkpoint of ``tiny_seg3d`` (random weights) with a 1 mm, 0..1 protocol."""
    import medvit
    from engine.checkpoint import save_weights, serialize_weights
    from engine.config import TrainConfig

    torch.manual_seed(model_seed)
    cfg = TrainConfig(task="seg", model="tiny_seg3d", model_args=dict(num_classes=3, in_chans=1, img_size=16),
                      data_args=dict(spatial_dims=3, roi=list(ROI), spacing=[2.0, 2.0, 2.0], a_min=0.0, a_max=1.0,
                                     names=["background", "a", "b"], **data_args))
    model = medvit.create_model("tiny_seg3d", **cfg.model_args)  # registered by the tiny_seg_models fixture
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    return save_weights(path, serialize_weights(model, cfg, 1))


@pytest.mark.usefixtures("tiny_seg_models")
def test_cli_ensemble_of_two_checkpoints_averages_their_probabilities(tmp_path, capsys):
    from cli.main import main

    ck = [_checkpoint(tmp_path / f"m{i}.safetensors", i) for i in (1, 2)]
    affine = np.diag([-1.5, 1.5, 2.5, 1.0])
    write_nifti(tmp_path / "in" / "ct.nii.gz", _volume((18, 20, 12), 4).data, affine)
    probs = []
    for i, args in enumerate([["--checkpoint", str(ck[0])], ["--checkpoint", str(ck[1])],
                              ["--checkpoint", str(ck[0]), "--checkpoint", str(ck[1])]]):
        out = tmp_path / f"out{i}"
        assert main(["seg", "predict", *args, "--input", str(tmp_path / "in"), "--out", str(out), "--device", "cpu",
                     "--no-overlay", "--save-probabilities", "npz"]) == 0
        probs.append(np.load(out / "ct_probs.npz")["probabilities"].astype(np.float32))
    text = capsys.readouterr().out
    assert "2 model(s) (ensemble" in text and "estimated peak memory" in text
    assert probs[0].shape == (3, 18, 20, 12)
    np.testing.assert_allclose(probs[2], (probs[0] + probs[1]) / 2, atol=2e-3)
    assert np.abs(probs[0] - probs[1]).max() > 0.1


def test_tta_axes_mirror_only_the_chosen_axes():
    model, vol = Asym3d(seed=3), _volume(seed=2)
    x = torch.from_numpy(vol.data)[None, None]

    def mean_over(sets):
        return torch.stack([sliding_window_probs(model, x.flip(a), ROI, 4, 0.5, "gaussian").flip(a) if a else
                            sliding_window_probs(model, x, ROI, 4, 0.5, "gaussian") for a in sets]).mean(0)[0]

    assert flip_sets(3, (1, 2)) == [(), (3,), (4,), (3, 4)]
    pred = _pred(model, tta="y,z")
    got = pred.predict(vol, probabilities=True).probs.astype(np.float32)
    np.testing.assert_allclose(got, mean_over(flip_sets(3, (1, 2))).numpy(), atol=2e-3)
    assert np.abs(got - mean_over(flip_sets(3)).numpy()).max() > 0.02  # not the 8-flip mean
    assert pred.settings.passes == 4 and "axes y,z" in pred.describe()


def test_tta_follows_the_runs_training_flips(tmp_path, tiny_seg_models):
    from engine.errors import UserError
    from medvit.inference import mirror_axes

    assert mirror_axes(True, 3, {"flip_prob": 0.0})[0] == ()
    assert mirror_axes(True, 3, {"flip_prob": 0.2})[0] == (0, 1, 2)
    assert mirror_axes(True, 3, None)[0] == (0, 1, 2) and mirror_axes(True, 2, {"flip_prob": 0})[0] == (0, 1)
    assert mirror_axes("z,x", 3)[0] == (0, 2) and mirror_axes("all", 2)[0] == (0, 1)
    assert mirror_axes("none", 3)[0] == () and mirror_axes(False, 3)[0] == ()
    with pytest.raises(UserError, match="--tta-axes: 'w' is not one of x, y, z"):
        mirror_axes("x,w", 3)
    no_flips = Predictor(_checkpoint(tmp_path / "nf.safetensors", 1, flip_prob=0.0), "cpu", tta=True)
    assert no_flips.settings.tta == () and "trained without flips" in no_flips.describe()
    forced = Predictor(_checkpoint(tmp_path / "nf.safetensors", 1, flip_prob=0.0), "cpu", tta="x,y,z")
    flips = Predictor(_checkpoint(tmp_path / "f.safetensors", 1, flip_prob=0.2), "cpu", tta=True)
    assert forced.settings.tta == flips.settings.tta == (0, 1, 2)


# ----------------------------------------------------------------------------------------- probabilities
def test_saved_probabilities_are_the_softmax_in_the_input_grid(tmp_path):
    model = Asym3d(seed=5)
    affine = np.array([[0.0, -1.0, 0.0, 30.0], [0.0, 0.0, 1.0, -20.0], [-1.0, 0.0, 0.0, 10.0], [0, 0, 0, 1.0]])
    vol = _volume((14, 20, 18), 6, affine)  # voxel axes (S, L, A), flipped: a permutation away from RAS
    src = write_nifti(tmp_path / "in.nii.gz", vol.data, affine)
    ras, ornt = to_ras(vol.data, affine)
    ref_ras = _plain_probs(model, np.ascontiguousarray(ras))
    ref = np.stack([from_ras(p, ornt) for p in ref_ras])  # (K, X, Y, Z) in the file's own voxel order
    pred = _pred(model)
    for fmt in ("npz", "nifti"):
        out = tmp_path / fmt
        (r,) = list(predict_files(pred, [src], out, overlay=False, probabilities=fmt))
        if fmt == "npz":
            z = np.load(r["probs"])
            got = z["probabilities"].astype(np.float32)
            np.testing.assert_allclose(z["affine"], affine)
        else:
            img = nib.load(str(r["probs"]))
            assert img.get_data_dtype() == np.uint16 and np.allclose(img.affine, affine)
            got = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), -1, 0)
        assert got.shape == (3, *vol.data.shape)
        np.testing.assert_allclose(got, ref, atol=2e-3)
        mask = np.asarray(nib.load(str(r["mask"])).dataobj)
        assert (mask == ref.argmax(0)).mean() > 0.999  # ties at float16 aside


# --------------------------------------------------------------------------------------- postprocessing
def test_largest_component_removes_the_far_speck_per_class():
    from medvit.postprocess import keep_largest_component

    mask = np.zeros((30, 30, 30), np.uint8)
    mask[5:12, 5:12, 5:12] = 1
    mask[12, 12, 12] = 1  # touches the blob by a corner only: the same 26-connected component
    mask[25, 25, 25] = 1  # far speck of class 1
    mask[18:24, 2:8, 2:8] = 2
    mask[2, 27, 27] = 2  # far speck of class 2
    out = keep_largest_component(mask)
    assert out[25, 25, 25] == 0 and out[2, 27, 27] == 0 and out[12, 12, 12] == 1
    assert (out == 1).sum() == 7 ** 3 + 1 and (out == 2).sum() == 6 ** 3
    assert (keep_largest_component(mask, classes=[2]) == 1).sum() == 7 ** 3 + 2  # class 1 untouched


class _Threshold(nn.Module):
    """Class 1 wherever the scaled intensity is above 0.5 (no windows, no position dependence)."""

    spatial_dims = 3

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 40.0 * (x - 0.5)], 1)


def _blob_and_speck_dataset(root):
    """``folder`` layout, 2 cases: a bright blob (labelled) and a bright far speck (not labelled)."""
    for i in (1, 2):
        img = np.zeros((24, 24, 24), np.float32)
        img[4:12, 4:12, 4 + i:12 + i] = 1.0
        lab = (img > 0).astype(np.uint8)
        img[19:23, 19:23, 19:23] = 1.0  # false positive far from the structure (16 % of the surface)
        write_nifti(root / "imagesTr" / f"img{i:04d}.nii.gz", img, np.eye(4))
        write_nifti(root / "labelsTr" / f"label{i:04d}.nii.gz", lab, np.eye(4))
    return root


def test_eval_reports_both_variants_and_picks_the_better(tmp_path):
    from medvit.evaluate import evaluate_split, write_choice
    from medvit.postprocess import resolve_postprocess

    root = _blob_and_speck_dataset(tmp_path / "data")
    pred = _pred(_Threshold(), num_classes=2, names=["background", "blob"])
    res = evaluate_split(pred, "folder", root, "all", postprocess="auto")
    pp = res.summary["postprocessing"]
    assert pp["better"] == "lcc" and res.summary["postprocess"] == "lcc"
    assert pp["lcc"]["dice"] == pytest.approx(1.0) and pp["none"]["dice"] < 0.95
    assert pp["lcc"]["hd95"] == pytest.approx(0.0) and pp["none"]["hd95"] > 5.0
    assert res.summary["mean_dice"] == pp["lcc"]["dice"]
    forced = evaluate_split(pred, "folder", root, "all", postprocess="none")
    assert forced.summary["mean_dice"] == pp["none"]["dice"] and forced.summary["postprocessing"]["better"] == "lcc"
    run = tmp_path / "run"
    assert resolve_postprocess("auto", run)[0] == "none"  # never evaluated
    write_choice(run / "eval", res)
    assert json.loads((run / "eval/postprocessing.json").read_text())["better"] == "lcc"
    assert resolve_postprocess("auto", run)[0] == "lcc"
    assert resolve_postprocess("auto", run / "checkpoints" / "best.safetensors")[0] == "lcc"
    vol = NiftiVolume(None, np.asarray(nib.load(str(root / "imagesTr/img0001.nii.gz")).dataobj, np.float32),
                      np.eye(4), None)
    lab = np.asarray(nib.load(str(root / "labelsTr/label0001.nii.gz")).dataobj)
    assert (_pred(_Threshold(), num_classes=2).predict(vol).mask != lab).sum() == 64  # the speck
    np.testing.assert_array_equal(_pred(_Threshold(), num_classes=2, postprocess="lcc").predict(vol).mask, lab)


def test_eval_keeps_none_when_largest_component_hurts(tmp_path):
    from medvit.evaluate import evaluate_split

    root = tmp_path / "data"
    img = np.zeros((24, 24, 24), np.float32)
    img[2:8, 2:8, 2:8] = 1.0
    img[14:22, 14:22, 14:22] = 1.0  # two real structures of one class: LCC drops the smaller one
    for i in (1, 2):
        write_nifti(root / "imagesTr" / f"img{i:04d}.nii.gz", img, np.eye(4))
        write_nifti(root / "labelsTr" / f"label{i:04d}.nii.gz", (img > 0).astype(np.uint8), np.eye(4))
    res = evaluate_split(_pred(_Threshold(), num_classes=2), "folder", root, "all")
    assert res.summary["postprocessing"]["better"] == "none" and res.summary["postprocess"] == "none"
    assert res.summary["mean_dice"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ stitching, memory, progress
def test_stitch_auto_goes_to_the_cpu_when_the_output_would_not_fit(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))
    s = Settings(3, (1, 1, 1), 0, 1, device=cuda, stitch="auto")
    assert _resolve_stitch(s, 400 << 20).type == "cuda"  # 400 MiB fits in half of 1 GiB free
    assert _resolve_stitch(s, 800 << 20).type == "cpu"
    assert _resolve_stitch(Settings(3, (1, 1, 1), 0, 1, device=cuda, stitch="device"), 800 << 20).type == "cuda"
    assert _resolve_stitch(Settings(3, (1, 1, 1), 0, 1, device=cuda, stitch="cpu"), 1).type == "cpu"


def test_memory_estimate_counts_the_stitched_maps():
    from medvit.inference import estimate_memory

    h1, d1 = estimate_memory((100, 100, 50), (60, 60, 30), 14, 1, True, True)
    h2, d2 = estimate_memory((100, 100, 50), (60, 60, 30), 14, 8, True, True)
    hc, dc = estimate_memory((100, 100, 50), (60, 60, 30), 14, 8, False, True)
    n_net = 60 * 60 * 30
    assert d2 - d1 == 14 * n_net * 4  # the running sum over TTA passes
    assert hc > h2 and dc < d2  # stitching on the CPU moves the maps off the device
    hp, _ = estimate_memory((100, 100, 50), (60, 60, 30), 14, 1, True, True, probabilities=True)
    assert hp - h1 == 14 * 100 * 100 * 50 * 2  # float16 probabilities in the input grid


def test_window_count_matches_the_forwards_and_progress_reaches_the_total():
    model, vol = Asym3d(), _volume((40, 22, 18))
    seen, totals, plans = [], [], []
    for tta in (False, True):
        model.calls = 0
        s = Settings(3, (1, 1, 1), 0.0, 1.0, sw_batch_size=1, tta=tta)
        segment_volume([Member(model, ROI)], vol, s, num_classes=3, on_start=totals.append,
                       on_windows=seen.append, on_plan=plans.append)
        assert totals[-1] == sum(seen) == model.calls
        seen.clear()
    assert totals[1] == 8 * totals[0] == 8 * count_windows((40, 22, 18), ROI, 0.5)
    assert "estimated peak memory" in plans[0].describe() and plans[1].passes == 8


def test_work_progress_plain_lines_have_an_eta(capsys):
    from engine.progress import WorkProgress

    with WorkProgress(2, quiet=True, every_s=0.0) as bar:
        bar.start_case("a.nii.gz", 4)
        bar.advance(2)
        bar.end_case()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("case 1/2 a.nii.gz: windows 2/4 eta case") and "eta all" in out[0]
    assert out[1].startswith("case 1/2 a.nii.gz: windows 4/4 eta case 0:00:00")


# -------------------------------------------------------------------------------------- object metrics
def test_glas_object_f1_and_dice_by_hand():
    from medvit.metrics import object_dice, object_f1

    gt = np.zeros((40, 40), bool)
    gt[2:12, 2:12] = True  # G1, 100 px
    gt[20:30, 20:30] = True  # G2, 100 px
    pred = np.zeros((40, 40), bool)
    pred[2:12, 2:8] = True  # S1 covers 60 % of G1 -> TP
    pred[20:24, 20:30] = True  # S2 covers 40 % of G2 -> FP (and G2 is a FN)
    pred[35:38, 35:38] = True  # S3: FP, no overlap
    assert object_f1(pred, gt) == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    d_g = 0.5 * (2 * 60 / 160) + 0.5 * (2 * 40 / 140)  # each GT object with its best prediction
    d_s = (60 * (2 * 60 / 160) + 40 * (2 * 40 / 140) + 9 * 0.0) / 109
    assert object_dice(pred, gt) == pytest.approx(0.5 * (d_g + d_s))
    assert np.isnan(object_f1(np.zeros_like(gt), np.zeros_like(gt)))
    assert object_dice(np.zeros_like(gt), gt) == 0.0


def test_folder2d_eval_reports_object_metrics(tmp_path):
    from PIL import Image

    from medvit.evaluate import evaluate_split

    for split in ("train", "val"):
        for sub in ("img", "labelcol"):
            (tmp_path / split / sub).mkdir(parents=True)
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, 4:12] = 255
        mask[20:28, 18:30] = 255
        Image.fromarray(mask).save(tmp_path / split / "img" / "g.png")
        Image.fromarray(mask).save(tmp_path / split / "labelcol" / "g.png")

    class Bright(nn.Module):
        spatial_dims = 2

        def forward(self, x):
            return torch.cat([torch.zeros_like(x), 40.0 * (x - 0.5)], 1)

    pred = _pred(Bright(), spatial_dims=2, roi=(32, 32), num_classes=2)
    res = evaluate_split(pred, "folder2d", tmp_path)
    assert res.summary["mean_object_f1"] == pytest.approx(1.0)
    assert res.summary["mean_object_dice"] == pytest.approx(1.0)
    assert res.summary["postprocessing"]["lcc"]["object_f1"] == pytest.approx(2 / 3)  # LCC drops one gland


def test_2d_images_are_read_by_skimage_as_pil_decodes_them(tmp_path, monkeypatch):
    from PIL import Image

    import skimage.io
    from medvit.io import read_image2d

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    deep = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "b.png")
    m = np.zeros((8, 8, 3), np.uint8)
    m[2:5, 2:5] = (255, 0, 0)  # a red mask: PIL's L gives 76
    Image.fromarray(m).save(tmp_path / "m.png")
    np.testing.assert_allclose(read_image2d(tmp_path / "a.bmp"), rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_image2d(tmp_path / "b.png")[0], deep / 65535.0, atol=1e-6)
    want = np.asarray(Image.open(tmp_path / "m.png").convert("L")).astype(np.int64)
    np.testing.assert_array_equal(read_image2d(tmp_path / "m.png", mask=True), want)
    calls = []
    real = skimage.io.imread
    monkeypatch.setattr(skimage.io, "imread", lambda *a, **k: calls.append(a) or real(*a, **k))
    read_image2d(tmp_path / "a.bmp")
    assert calls  # the reader really is skimage's


# ------------------------------------------------------------------------------------------------- C heap
def test_prediction_and_evaluation_jobs_apply_the_cpu_heap_policy(tmp_path, monkeypatch, tiny_seg_models):
    """``predict_files`` and ``evaluate_checkpoint`` set the C heap policy (``retain`` by default) on the CPU."""
    import engine.heap
    import medvit.evaluate

    seen = []
    monkeypatch.setattr(engine.heap, "set_cpu_heap", lambda p: seen.append(p) or True)
    src = write_nifti(tmp_path / "in.nii.gz", _volume((14, 12, 10), 1).data, np.eye(4))
    pred = _pred(Asym3d())
    assert len(list(predict_files(pred, [src], tmp_path / "a", overlay=False))) == 1
    list(predict_files(pred, [src], tmp_path / "b", overlay=False, cpu_heap="system"))
    assert seen == ["retain", "system"]
    with pytest.raises(ValueError, match="cpu_heap must be one of retain, system, got 'keep'"):
        list(predict_files(pred, [src], tmp_path / "c", overlay=False, cpu_heap="keep"))

    seen.clear()
    monkeypatch.setattr(medvit.evaluate, "evaluate_split", lambda *a, **k: medvit.evaluate.EvalResult([], {}, []))
    ck = _checkpoint(tmp_path / "m.safetensors", 1)
    medvit.evaluate.evaluate_checkpoint(ck, data="decathlon", data_dir=tmp_path, device="cpu")  # the split: stubbed
    assert seen == ["retain"]

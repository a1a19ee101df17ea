"""Evaluation and prediction from a released weights file, no run: ``vtk video eval|predict --model mvit
--pretrained MVIT_B_16x4.pyth``, ``vtk models convert``, class names and their mapping by name.

The weights file is pytorchvideo's ``mvit_base_16x4`` built by its hub builder without downloading (at a tiny
width: 8 channels, 32 px, 4 frames; MViT-B's 16 blocks and stage schedule), saved as ``{"model_state": ...}`` with
``torch.save`` like the released ``MVIT_B_16x4.pyth``. Every prediction must equal pytorchvideo's model applied to
the same decoded, transformed clips.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cli.main import main
from vtk_testing import perturb_

pv_hub = pytest.importorskip("pytorchvideo.models.hub.vision_transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

# K400 names the dataset folders take (the first, one with parentheses and capitals, the last).
NAMES = {"move_left": "abseiling", "move_right": "passing American football (in game)", "move_up": "zumba"}
K400_INDEX = {"abseiling": 0, "passing American football (in game)": 208, "zumba": 399}
PROTOCOL = ["--num-frames", "4", "--crop-size", "32", "--model-arg", "embed_dim=8"]
COMMON = ["--device", "cpu", *PROTOCOL]


@pytest.fixture(scope="module")
def pv_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = pv_hub.mvit_base_16x4(pretrained=False, spatial_size=32, temporal_size=4, patch_embed_dim=8)
    return perturb_(model, scale=0.2)  # position tables and biases start at zero in pytorchvideo


@pytest.fixture(scope="module")
def weights(pv_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zoo") / "MVIT_B_16x4.pyth"
    torch.save({"model_state": pv_model.state_dict(), "epoch": 200}, path)
    return path


@pytest.fixture(scope="module")
def k400_dir(synth_k400, tmp_path_factory) -> Path:
    """The synthetic set in the Kinetics ``folders`` layout with three real K400 class names."""
    root = tmp_path_factory.mktemp("k400names")
    for split in ("train", "val"):
        for folder in (synth_k400 / split).iterdir():
            shutil.copytree(folder, root / split / NAMES[folder.name])
    return root


def _reference(pv_model, folder: Path):
    """pytorchvideo's softmax over the 400 classes, per val video, on our decoded and transformed 5x1 views."""
    from videovit.data.dataset import VideoViewDataset
    from videovit.data.layouts import load_dataset

    vl = load_dataset("kinetics400", folder, "val")
    ds = VideoViewDataset(vl, num_frames=4, stride=4, crop_size=32, views=(5, 1), mean=[0.45] * 3, std=[0.225] * 3)
    out = {}
    with torch.no_grad():
        for i, (path, label) in enumerate(vl.samples):
            views, _ = ds[i]  # (5, 3, 4, 32, 32)
            out[path] = (pv_model(views).softmax(-1).mean(0), label)  # (400,)
    return vl, out


def test_k400_class_list_is_the_standard_order():
    from videovit.data.classes import class_list, class_list_for

    names = class_list("kinetics400")
    assert len(names) == len(set(names)) == 400 and names == sorted(names)
    assert names[0] == "abseiling" and names[-1] == "zumba" and names[290] == "sharpening knives"
    assert [names[i] for i in K400_INDEX.values()] == list(K400_INDEX)
    ucf = class_list("ucf101")
    assert len(ucf) == 101 and ucf[0] == "ApplyEyeMakeup" and ucf[-1] == "YoYo" and ucf[36] == "HandstandPushups"
    assert class_list_for(101) == ucf and class_list_for(400) == names and class_list_for(7) is None


def test_eval_from_weights_equals_pytorchvideo(pv_model, weights, k400_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["video", "eval", "--precision", "32", "--model", "mvit", "--pretrained", str(weights), "--data",
               "kinetics400", "--data-dir", str(k400_dir), "--num-workers", "0", "--out", str(out), *COMMON])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "pytorchvideo_mvit format" in text and "3 videos x 5x1 views" in text  # the registry's 5x1 views
    m = json.loads((out / "metrics.json").read_text())
    assert m["views"] == "5x1" and m["classes"] == list(NAMES.values())
    vl, ref = _reference(pv_model, k400_dir)
    cols = torch.tensor(list(K400_INDEX.values()))
    confusion = torch.zeros(3, 3, dtype=torch.long)
    for probs, label in ref.values():
        confusion[label, int(probs[cols].argmax())] += 1  # the dataset's 3 classes among the model's 400
    assert m["confusion"] == confusion.tolist()
    assert (out / "confusion.png").is_file()

    # the same through the Python API: per-video probabilities
    from videovit.inference import Predictor

    pred = Predictor.from_weights("mvit", weights, device="cpu", num_frames=4, crop_size=32,
                                  model_args={"embed_dim": 8}, precision="32")  # parity in fp32
    ev = pred.evaluate("val", data="kinetics400", data_dir=k400_dir, num_workers=0)
    expected = torch.stack([p[cols] / p[cols].sum() for p, _ in ref.values()])
    torch.testing.assert_close(ev.probs, expected, atol=1e-5, rtol=1e-4)
    assert pred.report.converter == "pytorchvideo_mvit" and not pred.report.kept_init


def test_predict_from_weights_prints_k400_names(pv_model, weights, k400_dir, tmp_path, capsys):
    out = tmp_path / "pred"
    rc = main(["video", "predict", "--precision", "32", "--model", "mvit", "--pretrained", str(weights), "--input",
               str(k400_dir / "val"), "--out", str(out), *COMMON])
    assert rc == 0, capsys.readouterr().err
    preds = json.loads((out / "predictions.json").read_text())["predictions"]
    from videovit.data.classes import class_list

    names = class_list("kinetics400")
    _, ref = _reference(pv_model, k400_dir)
    assert len(preds) == 3
    for path, (probs, _) in ref.items():
        top = preds[str(path)]
        scores, idx = probs.topk(5)
        assert [t["label"] for t in top] == [names[i] for i in idx.tolist()]  # names, not indices
        torch.testing.assert_close(torch.tensor([t["score"] for t in top]), scores, atol=1e-5, rtol=1e-4)


def test_convert_then_checkpoint(weights, k400_dir, tmp_path, capsys):
    """``vtk models convert`` writes a run folder that --checkpoint reads with the protocol of the registry."""
    run = tmp_path / "mvit-k400"
    rc = main(["models", "convert", str(weights), "--model", "mvit", "--out", str(run), "--model-arg", "embed_dim=8",
               "--model-arg", "img_size=32", "--model-arg", "num_frames=4"])
    assert rc == 0, capsys.readouterr().err
    from engine import load_run

    cfg, sd = load_run(run)
    assert cfg.task == "video" and cfg.model == "mvit_base_16x4" and cfg.data_args["val_views"] == "5x1"
    assert len(cfg.model_args["pretrained_sha256"]) == 64 and cfg.data_args["classes"][399] == "zumba"
    report = json.loads((run / "pretrained_report.json").read_text())
    assert report["format"] == "pytorchvideo_mvit" and report["new"] == [] and len(report["loaded"]) == len(sd)
    shutil.move(str(weights), str(weights) + ".moved")  # the folder never needs the original file again
    try:
        out = tmp_path / "ev"
        assert main(["video", "eval", "--checkpoint", str(run), "--data", "kinetics400", "--data-dir", str(k400_dir),
                     "--views", "5x1", "--num-workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    finally:
        shutil.move(str(weights) + ".moved", str(weights))
    assert json.loads((out / "metrics.json").read_text())["classes"] == list(NAMES.values())


def test_user_errors_are_one_line(weights, synth_k400, k400_dir, capsys):
    # a released file given as a run checkpoint: the message says what to do
    assert main(["video", "eval", "--checkpoint", str(weights), "--data", "kinetics400",
                 "--data-dir", str(k400_dir)]) == 2
    err = capsys.readouterr().err
    assert "not a vtk run checkpoint" in err and "--pretrained" in err and len(err.strip().splitlines()) == 1
    # motion-class names are not K400 classes: cannot be mapped
    assert main(["video", "eval", "--model", "mvit", "--pretrained", str(weights), "--data", "kinetics400",
                 "--data-dir", str(synth_k400), "--num-workers", "0", *COMMON]) == 2
    err = capsys.readouterr().err
    assert "cannot map them by name" in err and "move_left" in err and len(err.strip().splitlines()) == 1
    # protocol options belong to --pretrained; --pretrained needs --model
    assert main(["video", "eval", "--checkpoint", str(k400_dir), "--stride", "2"]) == 2
    assert "--stride: only without --checkpoint" in capsys.readouterr().err
    assert main(["video", "predict", "--pretrained", str(weights), "--input", str(k400_dir)]) == 2
    assert "--model NAME with --pretrained FILE" in capsys.readouterr().err
    assert main(["video", "eval", "--model", "mvit", "--pretrained", str(weights), "--classes", "a,b",
                 "--data", "kinetics400", "--data-dir", str(k400_dir), *COMMON]) == 2
    assert "2 names for a 400-class model" in capsys.readouterr().err


def test_match_classes_by_name():
    from engine.errors import UserError
    from videovit.data.classes import match_classes

    model = ["abseiling", "air drumming", "passing American football (in game)"]
    assert match_classes(model, model) is None
    assert match_classes(model, ["passing_American_football_(in_game)", "Abseiling"]) == [2, 0]
    assert match_classes(["0", "1"], ["left", "right"]) is None  # a model without names takes the dataset's order
    with pytest.raises(UserError, match="1 of its 2 classes .zumba. are not classes of the model"):
        match_classes(model, ["abseiling", "zumba"], "DIR")

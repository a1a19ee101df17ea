"""``vtk quickstart``, shrunken (2 steps each, 4 videos per class): both halves run side by side, write their
runs, evaluations and pictures, and print the figures that are in their metrics files."""

from __future__ import annotations

import json
import re

import nibabel as nib
from PIL import Image

from cli.main import main

TINY = ["--seg-steps", "2", "--video-steps", "2", "--videos-per-class", "4", "--device", "cpu"]


def _png(path) -> tuple:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_quickstart_runs_both_halves_and_prints_their_figures(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), *TINY]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out

    seg = json.loads((out / "seg" / "eval" / "metrics.json").read_text())
    assert f"mean Dice {seg['mean_dice']:.3f}" in text
    for name in ("left cerebral cortex", "right cerebral cortex", "cerebellum", "deep grey matter"):
        assert re.search(rf"{name}\s+Dice {seg['per_organ'][name]['dice']:.3f}", text)
    overlay = out / "seg" / "eval" / "img0002_overlay.png"
    assert f"overlay:  {overlay}" in text and min(_png(overlay)) > 50
    from medvit.quickstart import COLIN27

    mask = nib.load(out / "seg" / "eval" / "img0002_seg.nii.gz")
    scan = nib.load(COLIN27 / "imagesTr" / "img0002.nii.gz")
    assert mask.shape == scan.shape and (mask.affine == scan.affine).all()  # the scan's own grid

    video = json.loads((out / "video" / "run" / "eval" / "metrics.json").read_text())
    assert f"top-1 {video['top1']:.3f}" in text and video["views"] == "2x3" and video["videos"] == 4
    assert f"confusion: {out / 'video' / 'run' / 'eval' / 'confusion.png'}" in text
    _png(out / "video" / "run" / "eval" / "confusion.png")
    assert "step 2/2" in (out / "video" / "log.txt").read_text()  # the second process's log
    cfg = (out / "video" / "run" / "config.yaml").read_text()
    assert "embed_dim: 64" in cfg and "precision: '32'" in cfg  # the quick preset, in fp32
    assert "quickstart finished in" in text


def test_quickstart_only_checks_its_choice(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--only", "segm"]) == 2
    err = capsys.readouterr().err
    assert "--only: 'segm' is not one of seg, video; did you mean seg?" in err and len(err.strip().splitlines()) == 1

"""``vtk data prepare kinetics400``: a re-encoded copy in parallel, a manifest of present/missing/corrupt videos that
``vtk data check`` and eval read instead of probing files again, and a re-run that keeps what was done."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from videovit.data.decode import VideoReader


@pytest.fixture()
def broken_k400(synth_k400, tmp_path) -> Path:
    """The synthetic Kinetics folder with one train video deleted and one val video corrupt."""
    src = tmp_path / "src"
    shutil.copytree(synth_k400, src)
    train = sorted((src / "train").rglob("*.mp4"))
    val = sorted((src / "val").rglob("*.mp4"))
    train[0].unlink()
    val[1].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    return src


def _prepare(src: Path, out: Path, *extra: str) -> int:
    return main(["data", "prepare", "kinetics400", "--src", str(src), "--out", str(out), "--short-side", "16",
                 "--workers", "2", *extra])


def test_prepare_reencodes_and_lists_problems(broken_k400, tmp_path, capsys):
    src, out = broken_k400, tmp_path / "out"
    assert _prepare(src, out) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["train"] == {"layout": "csv", "listed": 12, "present": 11, "missing": 1, "corrupt": 0}
    assert m["splits"]["val"] == {"layout": "csv", "listed": 3, "present": 2, "missing": 0, "corrupt": 1}
    corrupt = [k for k, v in m["videos"].items() if v["status"] == "corrupt"]
    assert len(corrupt) == 1 and corrupt[0].startswith("val/") and not (out / corrupt[0]).exists()
    assert m["missing"]["train"] and not (src / m["missing"]["train"][0]).exists()
    for rel, entry in m["videos"].items():
        if entry["status"] != "present":
            continue
        before, after = VideoReader(src / rel), VideoReader(out / rel)
        frame = after.get_batch([0])[0]
        assert frame.shape == (16, 16, 3) and (entry["width"], entry["height"]) == (16, 16)
        assert len(after) == len(before) == entry["frames"] == 12 and entry["fps"] == pytest.approx(before.fps)
        # the content survives: the downscaled frame is close to the source frame averaged 2x2
        ref = before.get_batch([5])[0].reshape(16, 2, 16, 2, 3).mean((1, 3))
        assert np.abs(after.get_batch([5])[0].astype(float) - ref).mean() < 25
    for name in ("train.csv", "val.csv", "classids.json", "annotations/validate.csv"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    text = " ".join(capsys.readouterr().out.split())
    assert "1 corrupt video(s)" in text and "wrote" in text


def test_check_and_eval_use_the_manifest(broken_k400, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _prepare(broken_k400, out) == 0
    capsys.readouterr()

    def no_probe(*a, **k):
        raise AssertionError("check opened a video the manifest knows")

    monkeypatch.setattr("videovit.data.check.probe_video", no_probe)
    assert main(["data", "check", "kinetics400", "--data-dir", str(out)]) == 2  # the missing and the corrupt one
    text = " ".join(capsys.readouterr().out.split())
    assert "2 problem(s)" in text and "corrupt in manifest.json" in text and "missing" in text
    # eval and training read the copy's listing minus what the manifest lists as corrupt
    from engine.config import TrainConfig
    from videovit.task import load_split

    vl = load_split(TrainConfig(task="video", model="x", data="kinetics400", data_dir=str(out)), "val")
    assert len(vl.samples) == 2 and len(vl.missing) == 1


def test_rerun_keeps_finished_work(broken_k400, tmp_path):
    out = tmp_path / "out"
    assert _prepare(broken_k400, out) == 0
    first = json.loads((out / "manifest.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    assert len(stamps) == 13
    (out / "manifest.json").write_text(json.dumps({**first, "splits": {}}))  # proves the manifest is rewritten
    assert _prepare(broken_k400, out, "--workers", "1") == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == stamps  # present copies reused, not redone
    assert json.loads((out / "manifest.json").read_text()) == first
    # a different short side redoes everything
    assert _prepare(broken_k400, out, "--short-side", "8") == 0
    assert all(p.stat().st_mtime_ns != t for p, t in stamps.items())
    assert VideoReader(next(iter(stamps))).get_batch([0]).shape == (1, 8, 8, 3)


def test_prepare_bad_input_one_line(synth_k400, tmp_path, capsys):
    capsys.readouterr()
    for argv, needle in ((["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "nope: no such folder"),
                         (["--src", str(synth_k400), "--out", str(synth_k400 / "copy")], "must not be --src"),
                         (["--src", str(synth_k400), "--out", str(tmp_path / "o"), "--workers", "0"],
                          "--workers 0 >= 1")):
        assert main(["data", "prepare", "kinetics400", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err

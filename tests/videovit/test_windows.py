"""``vtk video predict --window S --hop S``: a per-window timeline of a long clip, decoded once in bounded memory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from vtk_testing import tiny_video_run
from engine.errors import UserError
from videovit.data.synth import render_video, write_video
from videovit.windows import Window, _window_frames, plan_windows

FPS = 25


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run, _ = tiny_video_run(tmp_path_factory.mktemp("win"), videos_per_class=2, seed=2, steps=1, batch_size=2)
    return run


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """120 frames at 25 fps (4.8 s): left, right, then up motion, 40 frames each."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    write_video(path, np.concatenate([render_video(c, 40, 32, rng) for c in (0, 1, 2)]), fps=FPS)
    return path


@pytest.fixture(scope="module")
def corrupt_tail(long_clip) -> Path:
    """The long clip with the last 40% of its H.264 data overwritten by noise (the mp4 index intact)."""
    data = bytearray(long_clip.read_bytes())
    start, moov = data.find(b"mdat"), data.find(b"moov")
    cut = start + int((moov - start) * 0.6)
    data[cut:moov - 8] = np.random.default_rng(1).integers(0, 256, moov - 8 - cut, dtype=np.uint8).tobytes()
    path = long_clip.with_name("tail.mp4")
    path.write_bytes(bytes(data))
    return path


def test_plan_windows_cover_the_video():
    plan = plan_windows(120, 25.0, 1.6, 0.8)
    assert [(w.start, w.stop) for w in plan] == [(0, 40), (20, 60), (40, 80), (60, 100), (80, 120)]
    plan = plan_windows(100, 25.0, 1.0, 1.5)  # hop > window: gaps (38 = round(37.5)), the last ends with the video
    assert [(w.start, w.stop) for w in plan] == [(0, 25), (38, 63), (75, 100)]
    assert plan_windows(100, 25.0, 4.0, 1.0) == [Window(0, 100)]  # the whole video, exactly
    for window, hop, needle in ((1.0, 0.0, "--hop: must be a positive"), (1.0, -2.0, "--hop: must be a positive"),
                                (float("nan"), 1.0, "--window: must be"), (5.0, 1.0, "v.mp4: --window 5 s is "
                                                                          "longer than the video (4.00 s"),
                                (1.0, 0.01, "--hop: 0.01 s is shorter than one frame")):
        with pytest.raises(UserError, match=needle.replace("(", r"\(")):
            plan_windows(100, 25.0, window, hop, "v.mp4")


def _reference(run_dir: Path, video: Path, windows, views=(2, 1)) -> torch.Tensor:
    """The tiny model on each window's clips decoded by random access (VideoReader), as predict_video does."""
    from videovit.data.decode import VideoReader
    from videovit.data.transforms import eval_transform
    from videovit.inference import Predictor

    p = Predictor(run_dir, device="cpu", views=views)
    o = p.options
    transform = eval_transform(o.crop_size, views[1], o.mean, o.std, o.short_side)
    reader = VideoReader(video)
    out = []
    for r in windows:
        idx = _window_frames(Window(r["start_frame"], r["end_frame"]), o.num_frames, o.stride, views[0])
        frames = reader.get_batch(idx.ravel()).reshape(*idx.shape, 32, 32, 3)
        with torch.no_grad():
            out.append(p.model(torch.cat([transform(f) for f in frames])).softmax(-1).mean(0))
    return torch.stack(out)


def test_predict_window_writes_timeline(run_dir, long_clip, tmp_path, capsys):
    out = tmp_path / "tl"
    assert main(["video", "predict", "--checkpoint", str(run_dir), "--input", str(long_clip), "--out", str(out),
                 "--views", "2x1", "--device", "cpu", "--window", "1.6", "--hop", "0.8", "--top-k", "3"]) == 0
    record = json.loads((out / "long.timeline.json").read_text())
    assert record["planned_windows"] == record["predicted_windows"] == 5 and record["stopped"] is None
    assert [(w["start"], w["end"]) for w in record["windows"]] == [(0.0, 1.6), (0.8, 2.4), (1.6, 3.2), (2.4, 4.0),
                                                                  (3.2, 4.8)]
    ref = _reference(run_dir, long_clip, record["windows"])
    for w, p in zip(record["windows"], ref):
        assert [t["index"] for t in w["top"]] == p.argsort(descending=True).tolist()
        np.testing.assert_allclose([t["score"] for t in w["top"]], p.sort(descending=True).values, atol=1e-5)
    rows = list(csv.reader((out / "long.timeline.csv").open()))
    assert rows[0][:6] == ["start_s", "end_s", "start_frame", "end_frame", "label1", "score1"] and len(rows) == 6
    assert [r[4] for r in rows[1:]] == [w["top"][0]["label"] for w in record["windows"]]
    assert (out / "long.timeline.png").stat().st_size > 5000
    text = capsys.readouterr().out
    held = int(text.split("at most ")[1].split()[0])
    assert 8 <= held <= 2 * 8 + 1  # two overlapping windows' 2 clips x 4 frames, never the 120 frames


def test_window_bad_input_one_line(run_dir, long_clip, tmp_path, capsys):
    base = ["video", "predict", "--checkpoint", str(run_dir), "--input", str(long_clip), "--out", str(tmp_path / "x"),
            "--device", "cpu"]
    capsys.readouterr()
    for extra, needle in ((["--window", "1", "--hop", "0"], "--hop: must be a positive number of seconds, got 0"),
                          (["--window", "1", "--hop", "-1"], "--hop: must be a positive number of seconds, got -1"),
                          (["--window", "10"], "long.mp4: --window 10 s is longer than the video (4.80 s, 120 "
                                               "frames at 25 fps)"),
                          (["--hop", "1"], "--hop: only with --window")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_corrupt_tail_predicts_what_decodes(run_dir, long_clip, corrupt_tail, tmp_path, capsys):
    out = tmp_path / "tl"
    capsys.readouterr()
    assert main(["video", "predict", "--checkpoint", str(run_dir), "--input", str(corrupt_tail), "--out", str(out),
                 "--views", "2x1", "--device", "cpu", "--window", "0.8", "--hop", "0.4"]) == 2
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if line.startswith("vtk:"))  # no progress
    record = json.loads((out / "tail.timeline.json").read_text())
    stop = record["stopped_frame"]
    assert len(err.splitlines()) == 1 and f"tail.mp4: decoding stopped at frame {stop} (" in err
    assert f"predicted {record['predicted_windows']} of {record['planned_windows']} windows" in err
    assert 0 < record["predicted_windows"] < record["planned_windows"] == 11 and 20 < stop < 110
    assert all(w["end_frame"] <= stop + 1 for w in record["windows"])
    # what was predicted before the corruption equals the intact file's windows
    ref = _reference(run_dir, long_clip, record["windows"])
    np.testing.assert_allclose([w["top"][0]["score"] for w in record["windows"]], ref.max(-1).values, atol=1e-5)
    assert (out / "tail.timeline.png").is_file() and (out / "tail.timeline.csv").is_file()

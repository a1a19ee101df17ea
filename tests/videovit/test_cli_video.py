"""End to end through ``cli.main.main``: synth -> check -> train a few steps -> eval -> predict (tiny TimeSformer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cli.main import main

TINY = ["--num-frames", "4", "--img-size", "32", "--patch-size", "8", "--model-arg", "embed_dim=16",
        "--model-arg", "depth=1", "--model-arg", "num_heads=2"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "k400"
    rc = main(["data", "synth", "kinetics400", "--out", str(out), "--classes", "3", "--videos-per-class", "4",
               "--frames", "8", "--size", "32", "--seed", "1"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def run_dir(synth_dir) -> Path:
    run = synth_dir.parent / "run"
    rc = main(["video", "train", "--model", "timesformer", "--data", "kinetics400", "--data-dir", str(synth_dir),
               "--out", str(run), "--max-steps", "2", "--batch-size", "4", "--val-every", "2", "--num-workers", "0",
               "--device", "cpu", "--quiet", "--mixup", "0.8", "--cutmix", "1.0", *TINY])
    assert rc == 0
    return run


def test_synth_writes_all_layouts(synth_dir):
    assert (synth_dir / "train.csv").is_file() and (synth_dir / "annotations" / "validate.csv").is_file()
    assert len(list((synth_dir / "train").glob("*/*.mp4"))) == 12
    assert json.loads((synth_dir / "classids.json").read_text()) == {"move_left": 0, "move_right": 1, "move_up": 2}


def test_check_reports_every_problem(synth_dir, tmp_path, capsys):
    assert main(["data", "check", "kinetics400", "--data-dir", str(synth_dir)]) == 0
    bad = tmp_path / "k"
    shutil.copytree(synth_dir, bad)
    videos = sorted((bad / "train").rglob("*.mp4"))
    videos[0].unlink()
    videos[1].write_bytes(b"not a video")
    capsys.readouterr()
    assert main(["data", "check", "kinetics400", "--data-dir", str(bad)]) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "missing" in text and "unreadable" in text and "2 problem(s)" in text
    assert videos[1].name in text.replace(" ", "") or videos[1].name[:8] in text


def test_train_writes_run(run_dir):
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["task"] == "video" and cfg["model"] == "timesformer_base_patch16_224"
    assert cfg["model_args"]["num_classes"] == 3 and cfg["data_args"]["hflip"] is False
    assert cfg["data_args"]["classes"] == ["move_left", "move_right", "move_up"]
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/top1" in r for r in records)


def test_eval_multiview(run_dir, capsys):
    out = run_dir / "eval"
    assert main(["video", "eval", "--checkpoint", str(run_dir), "--views", "2x3", "--out", str(out),
                 "--num-workers", "0", "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["views"] == "2x3" and m["videos"] == 3 and 0.0 <= m["top1"] <= m["top5"] == 1.0
    assert set(m["per_class"]) == {"move_left", "move_right", "move_up"}
    assert sum(map(sum, m["confusion"])) == 3
    assert (out / "confusion.png").stat().st_size > 1000
    assert main(["video", "eval", "--checkpoint", str(run_dir), "--views", "2by3"]) == 2


def test_predict_dir_with_odd_files(run_dir, odd_videos, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for key in ("h264", "h264_audio", "msmpeg4", "cinepak", "short", "vfr", "corrupt"):
        shutil.copy(odd_videos[key], folder / odd_videos[key].name)
    out = tmp_path / "pred"
    rc = main(["video", "predict", "--checkpoint", str(run_dir), "--input", str(folder), "--out", str(out),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "corrupt.mp4" in err
    result = json.loads((out / "predictions.json").read_text())
    assert len(result["predictions"]) == 6 and [Path(f).name for f in result["failed"]] == ["corrupt.mp4"]
    for top in result["predictions"].values():
        assert len(top) == 3 and abs(sum(t["score"] for t in top) - 1.0) < 1e-4
        assert top[0]["label"] in ("move_left", "move_right", "move_up")
    assert (out / "short.png").is_file() and (out / "clip_cinepak.png").is_file()
    one = main(["video", "predict", "--checkpoint", str(run_dir), "--input", str(folder / "corrupt.mp4"),
                "--out", str(out)])
    assert one == 2


def test_predict_same_stem_keeps_every_contact_sheet(run_dir, odd_videos, tmp_path):
    """Videos named alike (a/clip.mp4, b/clip.mp4, clip.mp4, clip.avi) each get their own contact sheet."""
    folder = tmp_path / "in"
    for rel, key in (("a/clip.mp4", "h264"), ("b/clip.mp4", "short"), ("clip.mp4", "vfr"), ("clip.avi", "msmpeg4")):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(odd_videos[key], folder / rel)
    out = tmp_path / "pred"
    assert main(["video", "predict", "--checkpoint", str(run_dir), "--input", str(folder), "--out", str(out),
                 "--device", "cpu", "--top-k", "2"]) == 0
    result = json.loads((out / "predictions.json").read_text())
    sheets = result["contact_sheets"]
    assert set(sheets) == set(result["predictions"]) and len(sheets) == 4
    assert len(set(sheets.values())) == 4 and all(Path(p).is_file() for p in sheets.values())
    assert (out / "a" / "clip.png").is_file() and (out / "b" / "clip.png").is_file()
    assert len(list(out.glob("clip-*.png"))) == 2 and not (out / "clip.png").exists()
    assert main(["video", "predict", "--checkpoint", str(run_dir), "--input", str(folder), "--top-k", "0"]) == 2


def test_resume_continues(run_dir, synth_dir):
    rc = main(["video", "train", "--resume", str(run_dir), "--max-steps", "3", "--num-workers", "0", "--quiet"])
    assert rc == 0
    steps = [json.loads(line).get("step") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3


def test_ucf101_synth_check_train(tmp_path):
    data = tmp_path / "ucf"
    assert main(["data", "synth", "ucf101", "--out", str(data), "--classes", "2", "--videos-per-class", "2",
                 "--frames", "6", "--size", "32"]) == 0
    assert len(list((data / "UCF-101").glob("*/*.avi"))) == 6
    assert main(["data", "check", "ucf101", "--data-dir", str(data)]) == 0
    run = tmp_path / "run"
    assert main(["video", "train", "--model", "timesformer", "--data", "ucf101", "--data-dir", str(data),
                 "--out", str(run), "--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--device",
                 "cpu", "--quiet", *TINY]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data_args"]["classes"] == ["MoveLeft", "MoveRight"]


@pytest.mark.parametrize("family", ["timesformer", "vivit", "stam", "vtn", "mvit"])
def test_every_family_trains_and_evaluates(family, synth_dir, tmp_path, capsys):
    """`vtk video train --model FAMILY` for each family (tiny registry overrides), then `vtk video eval` rebuilds it."""
    import videovit

    name = videovit.registry.resolve(family)  # family names are registry aliases
    tiny = videovit.registry.tiny_overrides(name)
    frames, size = tiny.pop("num_frames"), tiny.pop("img_size")
    tiny.pop("num_classes")
    args = [a for k, v in tiny.items() for a in ("--model-arg", f"{k}={list(v) if isinstance(v, tuple) else v}")]
    run = tmp_path / family
    rc = main(["video", "train", "--model", family, "--data", "kinetics400", "--data-dir", str(synth_dir), "--out",
               str(run), "--max-steps", "1", "--batch-size", "2", "--num-frames", str(frames), "--img-size", str(size),
               "--num-workers", "0", "--device", "cpu", "--quiet", *args])
    assert rc == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == name and cfg["model_args"]["num_classes"] == 3
    out = tmp_path / f"{family}-eval"
    capsys.readouterr()
    assert main(["video", "eval", "--checkpoint", str(run), "--views", "1x1", "--out", str(out),
                 "--num-workers", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["top1"] <= 1.0 and len(metrics["per_class"]) == 3


def test_bench_video_loader(tmp_path, capsys):
    """`vtk bench video-loader` runs benchmarks/video_loader.py side by side and prints the ratio; bad sizes exit 2."""
    assert main(["bench", "video-loader", "--stride", "0"]) == 2
    assert main(["bench", "video-loader", "--video-frames", "10"]) == 2
    assert main(["bench", "video-loader", "--videos", "2", "--repeats", "2"]) == 2  # no timed batch left
    capsys.readouterr()
    rc = main(["bench", "video-loader", "--num-frames", "4", "--stride", "2", "--rounds", "1", "--videos", "2",
               "--repeats", "6", "--video-frames", "30", "--workers", "0", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "pytorchvideo (pyav): 8 clips" in out and "vtk (decord): 8 clips" in out
    assert "pytorchvideo (decord): 8 clips" in out and "vtk (seek): 8 clips" in out and "| 4x2 |" in out
    assert "ratio vtk (seek) / pytorchvideo (pyav), median of 1 rounds" in out
    assert "ratio vtk (decord) / pytorchvideo (pyav), median of 1 rounds" in out

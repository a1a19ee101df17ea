"""Bad video inputs and faults, one case per class (issue 11): every user mistake exits 2 with one line naming the
file or option, before any training step and without a traceback; an unreadable validation video is skipped and
counted, and never costs a checkpoint.

Each case really injects its fault into a copy of a synthetic Kinetics / UCF101 folder (real H.264 / AVI files).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from cli.main import main
from engine import checkpoint as ckpt
from video_faults import truncate_faststart
from videovit.data.synth import SynthSpec, write_kinetics_synth, write_ucf101_synth

TINY = ["--num-frames", "4", "--img-size", "32", "--patch-size", "8", "--model-arg", "embed_dim=16",
        "--model-arg", "depth=1", "--model-arg", "num_heads=2"]


@pytest.fixture(scope="module")
def k400(tmp_path_factory) -> Path:
    """3 classes x 4 train / 1 val videos (8 frames, 32 px) in the csv, folder and official layouts."""
    out = tmp_path_factory.mktemp("bad") / "k400"
    write_kinetics_synth(out, SynthSpec(classes=3, videos_per_class=4, frames=8, size=32, seed=5))
    return out


@pytest.fixture(scope="module")
def ucf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "ucf"
    write_ucf101_synth(out, SynthSpec(classes=2, videos_per_class=2, frames=6, size=32, seed=5))
    return out


@pytest.fixture(scope="module")
def run(k400, tmp_path_factory) -> Path:
    """A one-step run to evaluate and predict with."""
    out = tmp_path_factory.mktemp("bad") / "run"
    assert _train(k400, out, "--max-steps", "1") == 0
    return out


def _train(data_dir: Path, out: Path, *extra: str, data: str = "kinetics400") -> int:
    return main(["video", "train", "--model", "timesformer", "--data", data, "--data-dir", str(data_dir),
                 "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
                 "--precision", "32", "--quiet", *TINY, *extra])


def _edit(path: Path, fn: Callable[[List[str]], List[str]]) -> None:
    path.write_text("".join(f"{line}\n" for line in fn(path.read_text().splitlines())))


def _relabel(line: str, label: object) -> str:
    return f"{line.rsplit(' ', 1)[0]} {label}"


# --------------------------------------------------------------------------------------------------- the cases
def _csv_negative(d: Path) -> List[str]:
    _edit(d / "train.csv", lambda ls: ls[:-1] + [_relabel(ls[-1], -1)])
    return ["--data", "csv"]


def _csv_99_plain(d: Path) -> List[str]:  # no class-name file: 99 would build a 100-class model
    (d / "classids.json").unlink()
    _edit(d / "train.csv", lambda ls: ls[:-1] + [_relabel(ls[-1], 99)])
    return ["--data", "csv"]


def _csv_99_classids(d: Path) -> List[str]:
    _edit(d / "train.csv", lambda ls: ls[:-1] + [_relabel(ls[-1], 99)])
    return []


def _val_label_not_a_training_class(d: Path) -> List[str]:
    _edit(d / "val.csv", lambda ls: [_relabel(ls[0], 7)] + ls[1:])
    return []


def _plain_val_label_beyond_training(d: Path) -> List[str]:  # plain csv: train uses 0..2, val says 3
    (d / "classids.json").unlink()
    _edit(d / "val.csv", lambda ls: [_relabel(ls[0], 3)] + ls[1:])
    return ["--data", "csv"]


def _classids_with_a_gap(d: Path) -> List[str]:
    (d / "classids.json").write_text(json.dumps({"move_left": 0, "move_right": 2, "move_up": 5}))
    return []


def _classes_txt_too_short(d: Path) -> List[str]:
    (d / "classids.json").unlink()
    (d / "classes.txt").write_text("move_left\nmove_right\n")
    return []


def _folders_val_class_unknown(d: Path) -> List[str]:
    extra = d / "val" / "jump"
    extra.mkdir()
    shutil.copy(next((d / "val" / "move_left").glob("*.mp4")), extra / "x.mp4")
    return ["--data-arg", "layout=folders"]


def _official_val_label_unknown(d: Path) -> List[str]:
    _edit(d / "annotations" / "validate.csv", lambda ls: [ls[0], ls[1].replace('"move_left"', '"jumping"')]
          + ls[2:])
    return ["--data-arg", "layout=official"]


def _ucf_train_label_out_of_range(d: Path) -> List[str]:
    _edit(d / "ucfTrainTestlist" / "trainlist01.txt", lambda ls: ls[:1] + [_relabel(ls[1], 9)] + ls[2:])
    return ["--data", "ucf101"]


def _ucf_class_ind_malformed(d: Path) -> List[str]:
    (d / "ucfTrainTestlist" / "classInd.txt").write_text("MoveLeft\n2 MoveRight\n")
    return ["--data", "ucf101"]


def _opt(*args: str) -> Callable[[Path], List[str]]:
    return lambda d: list(args)


TRAIN_CASES = {
    "csv label -1": (_csv_negative, r"train\.csv:\d+: label -1 is negative"),
    "plain csv label 99": (_csv_99_plain, r"train\.csv:12: label 99 makes 100 classes but no video has label "
                                          r"3-98.*--data-arg num_classes=100"),
    "csv label 99 with classids.json": (_csv_99_classids, r"train\.csv:12: label 99 is not a class: classids\.json "
                                                          r"\(3 classes\) are 0\.\.2"),
    "val label not a training class": (_val_label_not_a_training_class,
                                       r"val\.csv:1: label 7 is not a class: the 3 training classes are 0\.\.2"),
    "plain csv val label beyond training": (_plain_val_label_beyond_training,
                                            r"val\.csv:1: label 3 is not a class: the 3 training classes"),
    "classids.json ids with a gap": (_classids_with_a_gap, r"classids\.json: class ids must be 0\.\.2, each once; "
                                                           r"got 0, 2, 5"),
    "classes.txt shorter than the labels": (_classes_txt_too_short,
                                            r"train\.csv:\d+: label 2 is not a class: classes\.txt \(2 classes\)"),
    "class folder not a training class": (_folders_val_class_unknown,
                                          r"val/jump: class folder not among the 3 training classes"),
    "official val label unknown": (_official_val_label_unknown,
                                   r"validate\.csv:2: label 'jumping' is not among the 3 training classes"),
    "UCF101 label outside classInd": (_ucf_train_label_out_of_range,
                                      r"trainlist01\.txt:2: label 9 is not a class: classInd\.txt has classes 1\.\.2"),
    "UCF101 classInd.txt malformed": (_ucf_class_ind_malformed, r"classInd\.txt:1: expected 'index name'"),
    "--mixup -1": (_opt("--mixup", "-1"), r"--mixup: -1\.0 is out of range, must be in \[0, inf\)"),
    "--cutmix -0.5": (_opt("--cutmix", "-0.5"), r"--cutmix: -0\.5 is out of range"),
    "--label-smoothing 1": (_opt("--label-smoothing", "1"), r"--label-smoothing: 1\.0 is out of range, must be in "
                                                            r"\[0, 1\)"),
    "--label-smoothing -0.1": (_opt("--label-smoothing", "-0.1"), r"--label-smoothing: -0\.1 is out of range"),
    "--val-views 2by3": (_opt("--val-views", "2by3"), r"--val-views: views '2by3' must look like TxS"),
    "--val-views 0x3": (_opt("--val-views", "0x3"), r"--val-views: views '0x3': T and S must be >= 1"),
    "--data-arg bogus=3": (_opt("--data-arg", "bogus=3"), r"--data-arg: 'bogus' is not a known key, i\.e\. one of "
                                                          r"backend, classes, .*mixup, .*val_views"),
    "--data-arg mixup=nan": (_opt("--data-arg", "mixup=nan"), r"--mixup: '?nan'? is out of range"),
    "--model-arg bogus=3": (_opt("--model-arg", "bogus=3"), r"--model-arg: 'bogus' is not a known key, i\.e\. one "
                                                            r"of .*depth, .*embed_dim, .*num_heads"),
    "--model-arg embed_dm=16 (typo)": (_opt("--model-arg", "embed_dm=16"), r"did you mean embed_dim\?"),
}


def _one_error_line(capsys, pattern: str) -> str:
    """The output has no traceback and exactly one error line, the last on stderr, matching ``pattern``."""
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text[-2000:]
    errors = [line for line in out.err.splitlines() if line.startswith("vtk: error:")]
    assert len(errors) == 1 and out.err.rstrip().splitlines()[-1] == errors[0], out.err[-2000:]
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_training_input_exits_2_with_one_line(case, k400, ucf, tmp_path, capsys):
    inject, pattern = TRAIN_CASES[case]
    data = tmp_path / "data"
    shutil.copytree(ucf if "UCF101" in case else k400, data)
    extra = inject(data)
    name = next((extra[i + 1] for i, a in enumerate(extra) if a == "--data"), "kinetics400")
    extra = [a for i, a in enumerate(extra) if a != "--data" and (i == 0 or extra[i - 1] != "--data")]
    capsys.readouterr()
    rc = _train(data, tmp_path / "run", *extra, data=name)
    _one_error_line(capsys, pattern)
    assert rc == 2
    assert not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()  # refused before any step


def _check_label_problem(d: Path) -> None:
    _val_label_not_a_training_class(d)


def _check_truncated(d: Path) -> None:
    video = next((d / "val" / "move_up").glob("*.mp4"))
    truncate_faststart(video, video)


@pytest.mark.parametrize("inject, problem", [
    (_check_label_problem, r"val\.csv:1 .*label 7 is not a class"),
    (_check_truncated, r"truncated video: its index lists 8 frames but the file holds only 4"),
])
def test_data_check_reports_labels_and_truncated_videos(inject, problem, k400, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one table row per problem, unwrapped
    data = tmp_path / "data"
    shutil.copytree(k400, data)
    inject(data)
    capsys.readouterr()
    rc = main(["data", "check", "kinetics400", "--data-dir", str(data)])
    out = capsys.readouterr()
    table = " ".join(re.sub(r"[│┃┏┓┗┛┡┩└┘━─┼╇╋┳┻]", " ", out.out).split())
    assert rc == 2 and "Traceback" not in out.out + out.err
    assert re.search(problem, table), table
    assert out.err.strip().splitlines() == [f"vtk: error: {data}: 1 problem(s) (missing or unreadable videos, "
                                            "unusable split lists), listed above"]


EVAL_CASES = {
    "eval --views 2by3": (["video", "eval", "--views", "2by3"], r"--views: views '2by3' must look like TxS"),
    "predict --views 0x3": (["video", "predict", "--views", "0x3"], r"--views: views '0x3': T and S must be >= 1"),
    "predict --top-k 0": (["video", "predict", "--top-k", "0"], r"--top-k: must be >= 1, got 0"),
    "predict a truncated mp4": (["video", "predict"], r"broken\.mp4: truncated video: its index lists 8 frames but "
                                                      r"the file holds only 4"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_bad_eval_and_predict_options_exit_2(case, run, k400, tmp_path, capsys):
    args, pattern = EVAL_CASES[case]
    args = [*args, "--checkpoint", str(run), "--device", "cpu"]
    if args[1] == "predict":
        video = next((k400 / "val" / "move_left").glob("*.mp4"))
        if "truncated" in case:
            video = tmp_path / "broken.mp4"
            truncate_faststart(next((k400 / "val" / "move_left").glob("*.mp4")), video)
        args += ["--input", str(video), "--out", str(tmp_path / "pred")]
    else:
        args += ["--num-workers", "0", "--out", str(tmp_path / "eval")]
    capsys.readouterr()
    rc = main(args)
    _one_error_line(capsys, pattern)
    assert rc == 2


def test_same_stem_videos_keep_their_own_contact_sheets(run, k400, tmp_path):
    folder = tmp_path / "in"
    videos = sorted((k400 / "train").rglob("*.mp4"))[:2]
    for sub, video in zip(("a", "b"), videos):
        (folder / sub).mkdir(parents=True)
        shutil.copy(video, folder / sub / "clip.mp4")
    out = tmp_path / "pred"
    assert main(["video", "predict", "--checkpoint", str(run), "--input", str(folder), "--out", str(out),
                 "--device", "cpu", "--top-k", "1"]) == 0
    sheets = json.loads((out / "predictions.json").read_text())["contact_sheets"]
    assert len(set(sheets.values())) == 2 and all(Path(p).is_file() for p in sheets.values())
    a, b = (out / "a" / "clip.png").read_bytes(), (out / "b" / "clip.png").read_bytes()
    assert a != b  # two different videos' frames, neither overwritten


def _last_step(run_dir: Path) -> Optional[int]:
    w, s = ckpt.checkpoint_paths(run_dir / "checkpoints", "last")
    steps = {int(ckpt.read_metadata(w)["step"]), int(ckpt.load_state(s)["step"])}
    assert len(steps) == 1
    return steps.pop()


def test_unreadable_validation_video_is_skipped_and_never_costs_a_checkpoint(k400, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(k400, data)
    video = next((data / "val" / "move_right").glob("*.mp4"))
    assert truncate_faststart(video, video) == 4  # the index still lists 8 frames
    out = tmp_path / "run"
    capsys.readouterr()
    assert _train(data, out, "--val-every", "1", "--ckpt-every", "1") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "validation skips an unreadable video" in line]
    assert len(warnings) == 1 and video.name in warnings[0] and "truncated video" in warnings[0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/top1" in r]
    assert [(r["step"], r["val/skipped"]) for r in val] == [(1, 1.0), (2, 1.0)]
    assert all(0.0 <= r["val/top1"] <= 1.0 for r in val)  # over the 2 readable videos
    assert _last_step(out) == 2
    assert main(["video", "train", "--resume", str(out), "--max-steps", "3", "--num-workers", "0", "--quiet"]) == 0
    assert _last_step(out) == 3


def test_truncated_training_clip_is_skipped_for_the_next_video(k400, tmp_path, caplog):
    from videovit.data.dataset import VideoClipDataset
    from videovit.data.layouts import load_csv

    vl = load_csv(k400, "train")
    broken = tmp_path / "broken.mp4"
    truncate_faststart(vl.samples[0][0], broken)
    vl.samples[0] = (broken, vl.samples[0][1])
    ds = VideoClipDataset(vl, num_frames=4, stride=1)
    frames, label = ds[0]  # video 0 is skipped: the clip and label of video 1
    assert label == vl.samples[1][1] and frames.shape == (4, 32, 32, 3)
    assert any("broken.mp4: truncated video" in r.getMessage() for r in caplog.records)


def test_undecodable_file_leaves_stderr_to_the_one_error_line(tmp_path, capfd):
    """decord's C++ logger writes "ERROR opening: ..." to file descriptor 2 itself; nothing of it may show."""
    from engine.errors import UserError
    from videovit.data.decode import VideoReader

    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    capfd.readouterr()
    with pytest.raises(UserError, match=r"garbage\.mp4: cannot decode video \(decord: ") as e:
        VideoReader(bad, backend="decord")
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""
    assert "video_reader.cc" not in str(e.value)
    print("after", file=sys.stderr)  # stderr works again afterwards
    assert capfd.readouterr().err == "after\n"


def test_eval_of_a_truncated_video_in_a_worker_is_one_line(run, k400, tmp_path, capsys):
    """A DataLoader worker that fails re-raises with its traceback in the message: the error must not."""
    data = tmp_path / "data"
    shutil.copytree(k400, data)
    video = next((data / "val" / "move_up").glob("*.mp4"))
    truncate_faststart(video, video)
    capsys.readouterr()
    rc = main(["video", "eval", "--checkpoint", str(run), "--data-dir", str(data), "--num-workers", "2",
               "--device", "cpu", "--out", str(tmp_path / "eval")])
    line = _one_error_line(capsys, rf"{video.name}: truncated video: its index lists 8 frames")
    assert rc == 2 and "DataLoader worker" not in line

"""Kinetics-400 layouts (csv, folder per class, official annotations) and UCF101 resolve to the same samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import UserError
from videovit.data.layouts import detect_kinetics_layout, load_dataset, load_kinetics, load_ucf101
from videovit.data.synth import SynthSpec, write_ucf101_synth


def _pairs(vl):
    return sorted((str(p.resolve()), y) for p, y in vl.samples)


@pytest.mark.parametrize("split", ["train", "val"])
def test_three_kinetics_layouts_agree(synth_k400, split):
    lists = {lay: load_kinetics(synth_k400, split, lay) for lay in ("csv", "folders", "official")}
    assert {vl.layout for vl in lists.values()} == {"csv", "folders", "official"}
    ref = _pairs(lists["csv"])
    assert len(ref) == (12 if split == "train" else 3)
    for vl in lists.values():
        assert _pairs(vl) == ref and vl.classes == ["move_left", "move_right", "move_up"] and not vl.missing
    assert all(Path(p).parent.name == lists["csv"].classes[y] for p, y in ref)  # label matches the class folder


def test_auto_detection_prefers_csv_then_official_then_folders(synth_k400, tmp_path):
    assert detect_kinetics_layout(synth_k400) == "csv"
    copy = tmp_path / "k"
    shutil.copytree(synth_k400, copy)
    (copy / "train.csv").unlink()
    assert detect_kinetics_layout(copy) == "official"
    shutil.rmtree(copy / "annotations")
    assert detect_kinetics_layout(copy) == "folders"
    with pytest.raises(UserError, match="no Kinetics layout"):
        detect_kinetics_layout(tmp_path)


def test_missing_videos_are_skipped_and_counted(synth_k400, tmp_path):
    copy = tmp_path / "k"
    shutil.copytree(synth_k400, copy)
    gone = sorted((copy / "train").rglob("*.mp4"))[:2]
    for p in gone:
        p.unlink()
    for layout in ("csv", "official"):
        vl = load_kinetics(copy, "train", layout)
        assert len(vl) == 10 and len(vl.missing) == 2
        assert {p.name for p in vl.missing} == {p.name for p in gone}


def test_official_flat_folder_quoted_labels_with_spaces(tmp_path, synth_k400):
    """Official csv with quoted labels containing spaces and commas, videos flat in the split folder."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    src = sorted((synth_k400 / "train").rglob("*.mp4"))[:2]
    (tmp_path / "train").mkdir()
    rows = ["label,youtube_id,time_start,time_end,split,is_cc"]
    for i, (p, label) in enumerate(zip(src, ["riding a bike", "cooking, grilling"])):
        ytid, start, end = p.stem.rsplit("_", 2)
        shutil.copy(p, tmp_path / "train" / p.name)
        rows.append(f'"{label}",{ytid},{int(start)},{int(end)},train,{i % 2}')
    rows.append('"riding a bike",MISSINGxxxx,1,11,train,0')
    (ann / "train.csv").write_text("\n".join(rows) + "\n")
    vl = load_kinetics(tmp_path, "train")
    assert vl.layout == "official" and vl.classes == ["cooking, grilling", "riding a bike"]
    assert sorted(y for _, y in vl.samples) == [0, 1] and len(vl.missing) == 1


def test_csv_absolute_paths_and_bad_lines(synth_k400, tmp_path):
    video = sorted((synth_k400 / "train").rglob("*.mp4"))[0]
    (tmp_path / "train.csv").write_text(f"{video} 2\n")
    with pytest.raises(UserError, match=r"train.csv:1: label 2 makes 3 classes but no video has label 0-1"):
        load_kinetics(tmp_path, "train", "csv")  # a plain csv must use every class 0..K-1 ...
    vl = load_kinetics(tmp_path, "train", "csv", num_classes=3)  # ... or say how many there are
    assert vl.samples == [(video, 2)] and vl.classes == ["0", "1", "2"]
    (tmp_path / "train.csv").write_text("no_label_here\n")
    with pytest.raises(UserError, match="train.csv:1"):
        load_kinetics(tmp_path, "train", "csv")


def test_ucf101_split_files(tmp_path):
    write_ucf101_synth(tmp_path, SynthSpec(classes=3, videos_per_class=2, frames=6, size=32))
    train, test = load_ucf101(tmp_path, "train"), load_ucf101(tmp_path, "val")
    assert train.classes == ["MoveLeft", "MoveRight", "MoveUp"]
    assert len(train) == 6 and len(test) == 3
    for vl in (train, test):  # 1-indexed labels in trainlist, class from the folder in testlist
        assert all(p.suffix == ".avi" and p.parent.name == vl.classes[y] for p, y in vl.samples)
    assert load_dataset("ucf101", tmp_path, "train").samples == train.samples
    with pytest.raises(UserError, match="fold must be 1, 2 or 3"):
        load_ucf101(tmp_path, "train", fold=4)
    with pytest.raises(UserError, match="trainlist02.txt"):
        load_ucf101(tmp_path, "train", fold=2)

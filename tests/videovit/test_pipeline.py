"""The video pipeline outside the CLI: config resolution from the registry recipe, inference helpers, reports and
the dataset check."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import TrainConfig
from engine.errors import UserError
from videovit.data.check import check_dataset
from videovit.data.decode import VideoReader
from videovit.data.samplers import uniform_clips
from videovit.data.transforms import KINETICS_MEAN, KINETICS_STD, eval_transform
from videovit.inference import select_device
from videovit.report import contact_sheet_names
from videovit.task import VideoTask, video_options


def _cfg(model: str, data_dir, **data_args) -> TrainConfig:
    return TrainConfig(task="video", model=model, data="kinetics400", data_dir=str(data_dir),
                       model_args={"num_frames": 4, "img_size": 32}, data_args=dict(data_args))


def test_vivit_pipeline_uses_registry_mean_std(synth_k400):
    """ViViT's registry metadata says mean/std 0.5: the resolved config and the clips it feeds the model use it."""
    cfg = VideoTask().resolve_config(_cfg("vivit", synth_k400))
    assert cfg.model == "vivit_base_16x2_224"
    assert cfg.data_args["mean"] == [0.5, 0.5, 0.5] and cfg.data_args["std"] == [0.5, 0.5, 0.5]
    assert list(video_options(cfg).mean) == [0.5] * 3 and list(video_options(cfg).std) == [0.5] * 3
    _, val = VideoTask().build_datasets(cfg)
    views, _ = val[0]  # (1, C, T, H, W)
    path, _ = val.videos.samples[0]
    reader = VideoReader(path)
    frames = reader.get_batch(uniform_clips(len(reader), 4, cfg.data_args["stride"], 1)[0])
    torch.testing.assert_close(views[0], eval_transform(32, 1, (0.5,) * 3, (0.5,) * 3)(frames)[0])
    kinetics = eval_transform(32, 1, KINETICS_MEAN, KINETICS_STD)(frames)[0]
    assert (views[0] - kinetics).abs().max() > 0.1


def test_recipe_defaults_overrides_and_idempotence(synth_k400):
    """TimeSformer keeps the Kinetics mean/std and its 8x32 recipe; explicit data_args win; resolving twice is a
    no-op."""
    cfg = VideoTask().resolve_config(TrainConfig(task="video", model="timesformer", data="kinetics400",
                                                 data_dir=str(synth_k400)))
    assert cfg.model == "timesformer_base_patch16_224" and cfg.model_args["num_frames"] == 8
    assert cfg.data_args["mean"] == list(KINETICS_MEAN) and cfg.data_args["std"] == list(KINETICS_STD)
    assert cfg.data_args["stride"] == 1  # the synthetic set's marker beats the recipe's 32
    assert cfg.model_args["img_size"] == cfg.data_args["crop_size"] == 224 and cfg.model_args["num_classes"] == 3
    again = VideoTask().resolve_config(copy.deepcopy(cfg))
    assert again.to_dict() == cfg.to_dict()
    mine = VideoTask().resolve_config(_cfg("vivit", synth_k400, mean=[0.45] * 3, std=[0.2] * 3, stride=3))
    assert mine.data_args["mean"] == [0.45] * 3 and mine.data_args["std"] == [0.2] * 3
    assert mine.data_args["stride"] == 3


def test_resolve_config_user_errors(synth_k400):
    with pytest.raises(UserError, match="--model vivt: .*did you mean"):
        VideoTask().resolve_config(_cfg("vivt", synth_k400))
    with pytest.raises(UserError, match="--data: 'kinetics' is not one of .*did you mean kinetics400"):
        VideoTask().resolve_config(TrainConfig(task="video", model="vivit", data="kinetics", data_dir="x"))
    with pytest.raises(UserError, match="--data-dir is required"):
        VideoTask().resolve_config(TrainConfig(task="video", model="vivit", data="ucf101"))


def test_contact_sheet_names_are_unique(tmp_path):
    """Same stem in other folders -> the relative path; same relative stem -> stem plus a hash of the path."""
    root = tmp_path / "in"
    files = [root / "a" / "clip.mp4", root / "b" / "clip.mp4", root / "clip.mp4", root / "clip.avi",
             root / "other.mp4", tmp_path / "elsewhere" / "other.mp4"]
    names = contact_sheet_names(files, root)
    assert len(set(names.values())) == len(files)
    assert names[files[0]].as_posix() == "a/clip.png" and names[files[1]].as_posix() == "b/clip.png"
    for f in files[2:]:
        assert names[f].parent.as_posix() == "." and names[f].suffix == ".png"
        assert names[f].stem.split("-")[0] in ("clip", "other") and len(names[f].stem.split("-")[1]) == 8
    assert contact_sheet_names(files, root) == names  # deterministic
    assert contact_sheet_names([root / "x.mp4"], root) == {root / "x.mp4": Path("x.png")}


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="--device: 'gpu' is not one of auto, cpu, cuda, cuda:N"):
        select_device("gpu")
    if not torch.cuda.is_available():
        assert select_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="--device cuda:1: CUDA is not available"):
            select_device("cuda:1")
    else:
        with pytest.raises(UserError, match="CUDA device"):
            select_device(f"cuda:{torch.cuda.device_count()}")


def test_check_dataset_rows(synth_k400, tmp_path):
    result = check_dataset("kinetics400", synth_k400)
    assert result.ok and [r[0] for r in result.summary] == ["train", "val"]
    assert result.summary[0][2:] == (12, 0, 0, 3) and result.summary[1][2:] == (3, 0, 0, 3)
    bad = tmp_path / "k"
    shutil.copytree(synth_k400, bad)
    videos = sorted((bad / "val").rglob("*.mp4"))
    videos[0].unlink()
    videos[1].write_bytes(np.zeros(100, np.uint8).tobytes())
    result = check_dataset("kinetics400", bad)
    assert not result.ok and {(p[0], p[2] == "missing") for p in result.problems} == {("val", True), ("val", False)}
    assert result.summary[1][3:5] == (1, 1)

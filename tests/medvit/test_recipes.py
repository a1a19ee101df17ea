"""medvit.recipes / SegTask.resolve_config: paper recipes, defaults from registry metadata, idempotence; the
choice checks and atomic writers the seg pipeline goes through."""

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

import medvit
from engine.config import TrainConfig
from engine.errors import UserError
from medvit.recipes import recipe_defaults, resolve_seg_config, with_recipe_defaults
from medvit.task import SegTask


def _cfg(model, data_dir, **kw):
    return TrainConfig(task="seg", model=model, data=kw.pop("data", "btcv"), data_dir=str(data_dir), **kw)


def test_recipe_defaults_explicit_options_win():
    given = with_recipe_defaults("transunet", {"max_steps": 200, "lr": None, "batch_size": 8})
    assert (given["optimizer"], given["lr"], given["momentum"], given["schedule"]) == ("sgd", 0.01, 0.9, "poly")
    assert given["batch_size"] == 8 and given["max_steps"] == 200 and "warmup_steps" not in given
    swin = recipe_defaults("swinunetr", 500)  # an alias gets its entry's recipe
    assert swin["optimizer"] == "adamw" and swin["lr"] == 1e-4 and swin["warmup_steps"] == 5
    assert recipe_defaults("medt", None)["lr"] == 1e-3 and recipe_defaults(None, 10) == {}
    assert with_recipe_defaults("unetr", {"warmup_steps": 0})["warmup_steps"] == 0


def test_resolve_config_fills_from_metadata_and_is_idempotent(synth_dir):
    task = SegTask()
    src = _cfg("transunet", synth_dir, model_args={"depth": 2})
    cfg = task.resolve_config(src)
    assert src.model_args == {"depth": 2} and src.data_args == {}  # the input is not modified
    ma, da = cfg.model_args, cfg.data_args
    assert ma == {"depth": 2, "num_classes": 14, "img_size": 224, "in_chans": 1}
    assert da["spatial_dims"] == 2 and da["roi"] == [224, 224] and (da["a_min"], da["a_max"]) == (-125.0, 275.0)
    assert "spacing" not in da and len(da["names"]) == 14 and da["names"][6] == "liver"
    again = task.resolve_config(cfg)
    assert again.to_dict() == cfg.to_dict()
    unetr = task.resolve_config(_cfg("unetr", synth_dir, data="synapse", data_args={"roi": 64}))
    assert unetr.data_args["roi"] == [64, 64, 64] and unetr.data_args["spacing"] == [1.5, 1.5, 2.0]
    assert unetr.model_args["num_classes"] == 9 and unetr.data_args["a_min"] == -175.0


def test_spatial_dims_from_input_size_never_builds_the_model(synth_dir):
    def never_built(pretrained=None, **kw):
        raise AssertionError("resolve_config built the model")

    def bare_model(pretrained=None, **kw):
        raise AssertionError("resolve_config built the model")

    medvit.register_model(never_built, meta=dict(input_size=(1, 48, 40)))
    medvit.register_model(bare_model)
    try:
        cfg = resolve_seg_config(_cfg("never_built", synth_dir))
        assert cfg.data_args["spatial_dims"] == 2 and cfg.data_args["roi"] == [48, 48]
        bare = resolve_seg_config(_cfg("bare_model", synth_dir))
        assert bare.data_args["spatial_dims"] == 3 and bare.data_args["roi"] == [96, 96, 96]
        told = resolve_seg_config(_cfg("bare_model", synth_dir, data_args={"spatial_dims": 2}))
        assert told.data_args["spatial_dims"] == 2
    finally:
        medvit.registry.unregister("never_built")
        medvit.registry.unregister("bare_model")


def test_resolve_config_user_errors(synth_dir, tmp_path):
    with pytest.raises(UserError, match="--data and --data-dir are required"):
        resolve_seg_config(TrainConfig(task="seg", model="unetr"))
    with pytest.raises(UserError, match="did you mean btcv"):
        resolve_seg_config(_cfg("unetr", synth_dir, data="btvc"))
    with pytest.raises(UserError, match="--model unetrr: .*did you mean"):
        resolve_seg_config(_cfg("unetrr", synth_dir))
    with pytest.raises(UserError, match="pass --num-classes"):
        resolve_seg_config(_cfg("unetr", tmp_path, data="folder"))


def test_decathlon_names_from_the_datalist(tmp_path):
    (tmp_path / "dataset_0.json").write_text(json.dumps({"labels": {"0": "bg", "1": "liver", "2": "tumour"}}))
    cfg = resolve_seg_config(_cfg("unetr", tmp_path, data="decathlon"))
    assert cfg.model_args["num_classes"] == 3 and cfg.data_args["names"] == ["bg", "liver", "tumour"]


def test_training_step_leaves_autocast_to_the_engine():
    def no_autocast():
        raise AssertionError("training_step entered autocast itself")

    cfg = SimpleNamespace(data_args={}, model_args={"num_classes": 2})
    logits, label = torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.long)
    loss, _ = SegTask().training_step(torch.nn.Identity(), (logits, label), SimpleNamespace(autocast=no_autocast,
                                                                                              cfg=cfg))
    assert torch.isfinite(loss)


def test_eval_split_and_mode_are_checked_before_loading(tmp_path):
    from medvit.evaluate import evaluate_checkpoint

    missing = tmp_path / "no-such-run"
    with pytest.raises(UserError, match="--split: 'valid' is not one of.*did you mean validation"):
        evaluate_checkpoint(missing, split="valid")
    with pytest.raises(UserError, match="--mode: 'gausian' is not one of.*did you mean gaussian"):
        evaluate_checkpoint(missing, mode="gausian")


@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.nii"])
def test_write_nifti_atomic_round_trip(name, tmp_path):
    from medvit.io import write_nifti

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10, 4, 30)
    data = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    dst = write_nifti(tmp_path / "sub" / name, data, affine)
    img = nib.load(str(dst))
    assert np.array_equal(np.asarray(img.dataobj), data) and np.allclose(img.affine, affine)
    assert sorted(p.name for p in dst.parent.iterdir()) == [name]  # no temporary left behind


def test_quick_preset_batch_is_one_crop_per_rank(monkeypatch):
    """Under torchrun the quick preset's batch follows WORLD_SIZE, so `--preset quick` needs no --batch-size."""
    from medvit.presets import preset_options

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert preset_options("quick", "unetr")["batch_size"] == 1
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert preset_options("quick", "unetr")["batch_size"] == 3
    assert preset_options("quick", "transunet")["batch_size"] == 3

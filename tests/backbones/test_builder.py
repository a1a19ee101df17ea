"""``backbones._builder``: checkpoint reading, format detection, generic adaptation and the errors users see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backbones import create_model
from backbones._builder import adapt_input_conv, load_pretrained, read_checkpoint, take_indices
from backbones.convert import VIT_CONVERTERS, Converter, find_converter
from engine.errors import UserError

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4)


def _src() -> dict:
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", **TINY).state_dict()


@pytest.mark.parametrize("container", [None, "state_dict", "model", "model_state", "module"])
def test_read_pth_containers(tmp_path: Path, container) -> None:
    sd = _src()
    obj = sd if container is None else {container: sd, "epoch": 3, "optimizer": {"lr": 0.1}}
    torch.save(obj, tmp_path / "w.pth")
    out = read_checkpoint(tmp_path / "w.pth")
    assert out.keys() == sd.keys() and all(torch.equal(out[k], sd[k]) for k in sd)


def test_read_safetensors_and_npz(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    sd = _src()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_checkpoint(tmp_path / "w.safetensors")["cls_token"], sd["cls_token"])
    np.savez(tmp_path / "w.npz", a=np.ones((2, 3), np.float32))
    assert read_checkpoint(tmp_path / "w.npz")["a"].shape == (2, 3)


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.pth: no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="bad.pth: cannot read checkpoint"):
        read_checkpoint(tmp_path / "bad.pth")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="w.onnx: unknown checkpoint format"):
        read_checkpoint(tmp_path / "w.onnx")
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(UserError, match="empty.pt: checkpoint holds no tensors"):
        read_checkpoint(tmp_path / "empty.pt")


def test_weights_only_refuses_arbitrary_objects(tmp_path: Path) -> None:
    torch.save({"state_dict": _src(), "cfg": Path("x")}, tmp_path / "unsafe.pth")
    with pytest.raises(UserError, match=r"unsafe.pth: the file contains pickled code \(pathlib.*PosixPath\), and "
                       "vtk only loads weights"):
        read_checkpoint(tmp_path / "unsafe.pth")


def test_module_prefix_in_chans_and_head_report() -> None:
    sd = {f"module.{k}": v for k, v in _src().items()}
    model = create_model("vit_tiny_patch16_224", **dict(TINY, in_chans=1, num_classes=7, img_size=48))
    report = load_pretrained(model, sd, VIT_CONVERTERS)
    assert report.converter == "timm"
    torch.testing.assert_close(model.patch_embed.proj.weight, sd["module.patch_embed.proj.weight"].sum(1, True))
    assert any("in_chans 3 -> 1" in a for a in report.adapted)
    assert any(a.startswith("pos_embed: (1, 17, 32) -> (1, 37, 32)") for a in report.adapted)
    assert "head.weight" in report.kept_init and any(d.startswith("head.weight") for d in report.dropped)
    assert "loaded" in str(report)


@pytest.mark.parametrize("in_chans", [1, 2, 5])
def test_adapt_input_conv_matches_timm(in_chans: int) -> None:
    from timm.models._manipulate import adapt_input_conv as timm_adapt
    w = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(adapt_input_conv(in_chans, w), timm_adapt(in_chans, w))


def test_shape_mismatch_and_unknown_format_are_user_errors() -> None:
    sd = _src()
    model = create_model("vit_tiny_patch16_224", **dict(TINY, embed_dim=64))
    with pytest.raises(UserError, match="blocks.0.norm1.weight has shape|cls_token has shape"):
        load_pretrained(model, sd, VIT_CONVERTERS)
    with pytest.raises(UserError, match="unrecognised checkpoint for a vit model"):
        load_pretrained(model, {"foo.weight": torch.zeros(1)}, VIT_CONVERTERS)
    missing = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    with pytest.raises(UserError, match="missing from the checkpoint"):
        load_pretrained(create_model("vit_tiny_patch16_224", **TINY), missing, VIT_CONVERTERS)
    odd = dict(sd, pos_embed=torch.zeros(1, 15, 32))  # 14 grid rows: no square grid to resample from
    with pytest.raises(UserError, match="cannot adapt the weights to this model"):
        load_pretrained(create_model("vit_tiny_patch16_224", **dict(TINY, img_size=48)), odd, VIT_CONVERTERS)
    with pytest.raises(UserError, match="does not download"):
        create_model("vit_tiny_patch16_224", pretrained=True)


def test_converter_registry_order_and_pure_convert() -> None:
    seen = {}

    def convert(sd, model):
        seen["n"] = len(sd)
        return {k[len("enc."):]: v for k, v in sd.items()}

    enc = Converter("test-enc", "test-family", lambda sd: "enc.cls_token" in sd, convert)
    sd = {f"enc.{k}": v for k, v in _src().items()}
    assert find_converter(sd, (enc,)).name == "test-enc"
    assert find_converter(sd, VIT_CONVERTERS) is None
    model = create_model("vit_tiny_patch16_224", **TINY)
    report = load_pretrained(model, sd, (enc, *VIT_CONVERTERS))
    assert report.converter == "test-enc" and seen["n"] == len(sd)
    assert "enc.cls_token" in sd  # the caller's dict is untouched


def test_take_indices() -> None:
    assert take_indices(12, 4) == ([8, 9, 10, 11], 11)
    assert take_indices(12, [2, -1, 5]) == ([2, 5, 11], 11)
    with pytest.raises(ValueError, match="out of range"):
        take_indices(12, [12])

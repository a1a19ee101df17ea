"""Swin parity with timm (2D) and MONAI's SwinViT (3D) through the registered converters, and converter errors.

Each parity test is paired with a sensitivity check: perturbing any single converted tensor changes the output,
so (with the parity itself) a single wrongly mapped or swapped weight would fail.
"""

from __future__ import annotations

import re

import pytest
import torch

from backbones import create_model
from backbones._builder import load_pretrained
from backbones.convert import SWIN_CONVERTERS, find_converter
from engine.errors import UserError
from vtk_testing import perturb_

__all__: list = []

timm = pytest.importorskip("timm")

_TIMM_CFGS = [
    dict(img_size=64, window_size=4, depths=(2, 2), num_heads=(2, 4), embed_dim=32),
    dict(img_size=(48, 64), window_size=8, depths=(2, 2, 2), num_heads=(1, 2, 4), embed_dim=16),  # clipped tables
]
_MONAI_SIZE = (16, 32, 16)  # stage grids (8,16,8) ... (1,2,1): padding, clipped and truncated windows


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(model):
    """Spread the weights (timm's std-0.02 init makes attention nearly inert, hiding mapping errors)."""
    return perturb_(model, 0.1, seed=None)


def _kinds(keys):
    """One key per kind (digits collapsed): every mapping rule, without sweeping every tensor."""
    seen = {}
    for k in keys:
        seen.setdefault(re.sub(r"\d+", "#", k), k)
    return list(seen.values())


def _timm_pair(cfg, **extra):
    ref = _randomize(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=7, **cfg).eval())
    ours = create_model("swin_tiny_patch4_window7_224", pretrained=ref.state_dict(), num_classes=7, **cfg,
                        **extra).eval()
    return ref, ours


def _input2d(cfg, chans=3):
    size = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    return torch.randn(2, chans, *size)


def _sensitivity(model, x, keys, out_fn=None):
    """Keys whose perturbation leaves the output unchanged (should be none)."""
    out_fn = out_fn or model
    with torch.no_grad():
        base = out_fn(x)
        dead = []
        params = dict(model.named_parameters())
        for k in keys:
            p = params[k]
            saved = p.detach().clone()
            p.add_(torch.randn_like(p) * 0.5 + 0.1)
            if (out_fn(x) - base).abs().max() < 1e-4:
                dead.append(k)
            p.copy_(saved)
    return dead


# ---------------------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("cfg", _TIMM_CFGS)
def test_timm_parity(cfg):
    ref, ours = _timm_pair(cfg)
    x = _input2d(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
        ref_feats = ref.forward_intermediates(x, intermediates_only=True)
        ours_feats = ours.forward_intermediates(x, indices=len(ref_feats), intermediates_only=True)
    for a, b in zip(ours_feats, ref_feats):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_timm_every_weight_matters_and_a_swap_is_caught():
    cfg = _TIMM_CFGS[0]
    ref, ours = _timm_pair(cfg)
    x = _input2d(cfg)
    assert _sensitivity(ours, x[:1], _kinds(k for k, _ in ours.named_parameters())) == []
    sd = ref.state_dict()
    a, b = "layers.1.blocks.0.attn.qkv.weight", "layers.1.blocks.1.attn.qkv.weight"
    swapped = create_model("swin_tiny_patch4_window7_224", pretrained={**sd, a: sd[b], b: sd[a]}, num_classes=7,
                           **cfg).eval()
    with torch.no_grad():
        assert (swapped(x) - ref(x)).abs().max() > 1e-3


def test_original_microsoft_layout_converts():
    """Downsample at the end of a stage and a bare ``head`` (Microsoft release) -> timm layout."""
    cfg = _TIMM_CFGS[0]
    ref, _ = _timm_pair(cfg)
    sd = {}
    for k, v in ref.state_dict().items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k
        sd[k.replace("head.fc.", "head.")] = v
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)  # stored by old checkpoints
    assert find_converter(sd, SWIN_CONVERTERS).name == "timm"
    ours = create_model("swin_tiny_patch4_window7_224", pretrained={"model": sd}, num_classes=7, **cfg).eval()
    x = _input2d(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_timm_in_chans_1_and_window_resize(tmp_path):
    cfg = _TIMM_CFGS[0]
    ref, _ = _timm_pair(cfg)
    path = tmp_path / "swin.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    gray = create_model("swin_tiny_patch4_window7_224", pretrained=str(path), num_classes=7, in_chans=1,
                        **cfg).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # summed RGB filters on a grey image == the RGB model on the replicated image
        torch.testing.assert_close(gray(x), ref(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    big = create_model("swin_tiny_patch4_window7_224", num_classes=7, **{**cfg, "window_size": 8})
    report = load_pretrained(big, str(path), SWIN_CONVERTERS)
    assert any("relative_position_bias_table: (49, 2) -> (225, 2)" in a for a in report.adapted)
    assert report.converter == "timm"


# --------------------------------------------------------------------------------------------------------- MONAI
def _monai_pair():
    """MONAI's bare ``SwinTransformer`` (Swin-UNETR's ``swinViT``; keys without a prefix)."""
    from monai.networks.nets.swin_unetr import SwinTransformer

    ref = _randomize(SwinTransformer(in_chans=1, embed_dim=12, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                                     depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24)).eval())
    ours = create_model("swin3d_tiny_patch2_window7_96", pretrained=ref.state_dict(), embed_dim=12,
                        depths=(2, 2, 2, 2)).eval()
    return ref, ours


def test_monai_swinvit_encoder_parity():
    ref, ours = _monai_pair()
    x = torch.randn(1, 1, *_MONAI_SIZE)
    with torch.no_grad():
        hs = ref(x, normalize=False)
        feats = ours.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == len(hs) == 5
    for a, b in zip(feats, hs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # every encoder tensor is used: a single wrong mapping would break the parity above
    keys = _kinds(k for k, _ in ours.named_parameters() if not k.startswith(("norm.", "head.")))
    small = torch.randn(1, 1, 8, 16, 8)  # still pads (8 -> 14) and clips (4, 7, 4)
    assert _sensitivity(ours, small, keys, out_fn=lambda t: torch.cat([
        f.flatten() for f in ours.forward_intermediates(t, intermediates_only=True)])) == []


def test_monai_weights_need_the_monai_layout_and_encoder_keys():
    sd = _monai_pair()[0].state_dict()
    timm_layout = create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, embed_dim=12,
                               depths=(2, 2, 2, 2), in_chans=1, num_classes=0)
    with pytest.raises(UserError, match="downsample_last"):
        load_pretrained(timm_layout, sd, SWIN_CONVERTERS)
    enc = create_model("swin3d_tiny_patch2_window7_96", embed_dim=12, depths=(2, 2, 2, 2))
    with pytest.raises(UserError, match="unrecognised checkpoint"):
        load_pretrained(enc, {"encoder.weight": torch.zeros(1)}, SWIN_CONVERTERS)
    missing = {k: v for k, v in sd.items() if "layers3.0.blocks.1.attn.proj" not in k}
    with pytest.raises(UserError, match="missing"):
        load_pretrained(enc, missing, SWIN_CONVERTERS)

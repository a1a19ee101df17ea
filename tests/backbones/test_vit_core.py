"""ViT 2D/3D and R50+ViT: shapes, ``forward_intermediates``, argument checks, position tables, parameter counts."""

from __future__ import annotations

import pytest
import torch

from backbones import create_model
from backbones.models.vit import VisionTransformer

T2 = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)
T3 = dict(img_size=(16, 24, 32), patch_size=8, embed_dim=32, depth=3, num_heads=2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_2d_forward_and_pooling() -> None:
    x = torch.randn(2, 3, 32, 32)
    m = create_model("vit_small_patch16_224", **T2).eval()
    assert m(x).shape == (2, 5)
    assert m.forward_features(x).shape == (2, 17, 32)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 32)
    avg = create_model("vit_small_patch16_224", **T2, global_pool="avg", class_token=False).eval()
    assert avg.forward_features(x).shape == (2, 16, 32) and avg(x).shape == (2, 5)
    assert isinstance(avg.norm, torch.nn.Identity) and isinstance(avg.fc_norm, torch.nn.LayerNorm)
    feats = create_model("vit_small_patch16_224", **dict(T2, num_classes=0))
    assert feats(x).shape == (2, 32)


def test_3d_intermediates_formats() -> None:
    m = create_model("vit3d_small_patch16_96", **T3).eval()
    x = torch.randn(2, 1, 16, 24, 32)
    maps = m.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert [tuple(f.shape) for f in maps] == [(2, 32, 2, 3, 4)] * 2
    tokens = m.forward_intermediates(x, indices=2, output_fmt="NLC", norm=True, intermediates_only=True)
    assert [tuple(f.shape) for f in tokens] == [(2, 24, 32)] * 2
    final, inter = m.forward_intermediates(x, indices=1)
    torch.testing.assert_close(final, m.forward_features(x))
    # grid layout: token n of the NLC output is voxel (d, h, w) of the map, row-major
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), m.forward_intermediates(x, [2], output_fmt="NLC",
                                                                                 intermediates_only=True)[0])
    with pytest.raises(ValueError, match="output_fmt: 'NCHW' is not one of NLC, NCDHW"):
        m.forward_intermediates(x, output_fmt="NCHW")


def test_intermediates_prefix_tokens_and_stop_early() -> None:
    m = create_model("vit_small_patch16_224", **T2).eval()
    x = torch.randn(1, 3, 32, 32)
    (feat, prefix), = m.forward_intermediates(x, indices=[1], return_prefix_tokens=True, stop_early=True,
                                              intermediates_only=True)
    assert feat.shape == (1, 32, 4, 4) and prefix.shape == (1, 1, 32)
    full = m.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
    torch.testing.assert_close(feat, full)


@pytest.mark.parametrize("kwargs,match", [
    (dict(global_pool="token", class_token=False), "needs class_token=True"),
    (dict(global_pool="max"), "global_pool: 'max' is not one of token, avg, "),
    (dict(embed_dim=30, num_heads=4), "embed_dim 30 should be divisible by num_heads 4"),
    (dict(pos_embed="rope"), "pos_embed: 'rope' is not one of learn, sincos, none"),
    (dict(spatial_dims=4), "spatial_dims: 4 is not one of 2, 3"),
    (dict(img_size=30), "img_size .* must be divisible by patch_size"),
])
def test_ill_args(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VisionTransformer(**{**T2, **kwargs})


def test_wrong_input_size_and_dynamic_size() -> None:
    m = create_model("vit_small_patch16_224", **T2).eval()
    with pytest.raises(ValueError, match="does not match img_size"):
        m(torch.randn(1, 3, 48, 32))
    d = create_model("vit_small_patch16_224", **T2, dynamic_img_size=True).eval()
    d.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(d(x), m(x))
    y = torch.randn(1, 3, 48, 40)
    assert d.forward_intermediates(y, indices=1, intermediates_only=True)[0].shape == (1, 32, 6, 5)
    big = create_model("vit_small_patch16_224", **dict(T2, img_size=(48, 40)), pretrained=m.state_dict()).eval()
    torch.testing.assert_close(d(y), big(y))  # on-the-fly resampling == resampling at load time


def test_sincos_table_is_fixed_and_not_required_in_checkpoints() -> None:
    kw = dict(T3, embed_dim=48, pos_embed="sincos")  # 3D sin-cos needs a width divisible by 6
    m = create_model("vit3d_small_patch16_96", **kw)
    assert not m.pos_embed.requires_grad and m.pos_embed.shape == (1, 24, 48)
    sd = {k: v for k, v in m.state_dict().items() if k != "pos_embed"}
    m2 = create_model("vit3d_small_patch16_96", **kw, pretrained=sd)
    torch.testing.assert_close(m2.pos_embed, m.pos_embed)


def test_no_embed_class_and_class_token_adaptation() -> None:
    """A timm table with a class row loads into a model without class token (row dropped) and vice versa."""
    src = create_model("vit_small_patch16_224", **T2)
    dst = create_model("vit_small_patch16_224", **T2, class_token=False, global_pool="avg", fc_norm=False,
                       pretrained=src.state_dict())
    torch.testing.assert_close(dst.pos_embed, src.pos_embed[:, 1:])
    back = create_model("vit_small_patch16_224", **T2, no_embed_class=True, pretrained=src.state_dict())
    torch.testing.assert_close(back.pos_embed, src.pos_embed[:, 1:])


def test_reset_classifier() -> None:
    m = create_model("vit_small_patch16_224", **T2)
    m.reset_classifier(3, global_pool="avg")
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3) and m.pretrained_cfg["num_classes"] == 3


def test_hybrid_intermediates_and_feature_info() -> None:
    m = create_model("vit_base_r50_s16_224", layers=(1, 1, 1), img_size=64, embed_dim=32, depth=2, num_heads=2)
    x = torch.randn(1, 3, 64, 64)
    skips, final, feats = m.forward_intermediates_with_skips(x, indices=[0, 1])
    assert [tuple(f.shape) for f in skips + feats] == [(1, 64, 32, 32), (1, 256, 16, 16), (1, 512, 8, 8),
                                                       (1, 32, 4, 4), (1, 32, 4, 4)]
    torch.testing.assert_close(final, m.forward_features(x))
    assert [(i["num_chs"], i["reduction"]) for i in m.cnn_feature_info] == [(64, 2), (256, 4), (512, 8)]
    assert len(m.forward_intermediates(x, indices=1, intermediates_only=True)) == 1
    assert m.pretrained_cfg["first_conv"] == "patch_embed.backbone.stem.conv"


@pytest.mark.parametrize("name,expected", [
    ("vit_base_patch16_224", 86_567_656),     # timm / ViT paper Table 1: 86M
    ("vit_large_patch16_224", 304_326_632),   # ViT paper: 307M (304.3M in timm)
    ("vit_base_r50_s16_224", 98_659_112),     # timm vit_base_r50_s16_224 with 1000-class head
    ("vit3d_base_patch16_96", 88_368_384),    # UNETR's ViT-B/16 at 96^3 with qkv bias (see the MONAI test)
])
def test_param_counts_at_paper_configs(name: str, expected: int) -> None:
    with torch.device("meta"):
        m = create_model(name)
    assert sum(p.numel() for p in m.parameters()) == expected


def test_param_count_matches_monai_unetr_vit() -> None:
    """MONAI's ViT (UNETR encoder, 96^3, patch 16, no qkv bias) minus its unused cross-attention norms."""
    from monai.networks.nets import ViT
    with torch.device("meta"):
        ref = ViT(in_channels=1, img_size=96, patch_size=16, proj_type="conv")
        ours = create_model("vit3d_base_patch16_96", qkv_bias=False)
    n_ref = sum(p.numel() for n, p in ref.named_parameters() if "cross_attn" not in n)
    assert sum(p.numel() for p in ours.parameters()) == n_ref

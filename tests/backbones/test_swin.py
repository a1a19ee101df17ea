"""Swin window attention and the Swin 2D/3D model surface (shapes, levels, arguments, checkpointing)."""

from __future__ import annotations

import pytest
import torch

from backbones import create_model
from backbones.layers.window_attention import (WindowAttention, relative_position_index, resize_rel_pos_table,
                                               shifted_window_mask, window_partition, window_reverse)
from backbones.models.swin import PatchMerging, SwinTransformer

__all__: list = []

_T2D = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=5)
_T3D = dict(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(1, 2), window_size=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------- window primitives
@pytest.mark.parametrize("size,window", [((8, 12), (4, 3)), ((4, 6, 8), (2, 3, 4))])
def test_partition_reverse_roundtrip(size, window):
    x = torch.randn(2, *size, 5)
    w = window_partition(x, window)
    n = 1
    for s, k in zip(size, window):
        n *= s // k
    assert w.shape == (2 * n, torch.Size(window).numel(), 5)
    # the first window holds the top-left-front block of sample 0
    block = x[(0,) + tuple(slice(0, k) for k in window)].reshape(-1, 5)
    torch.testing.assert_close(w[0], block)
    torch.testing.assert_close(window_reverse(w, window, size), x)


def test_relative_position_index_matches_monai_and_timm():
    from monai.networks.nets.swin_unetr import WindowAttention as MonaiWA
    from timm.models.swin_transformer import get_relative_position_index

    for win in [(2, 3, 4), (3, 3, 3)]:
        ref = MonaiWA(8, 2, win).relative_position_index
        assert torch.equal(relative_position_index(win), ref)
    assert torch.equal(relative_position_index((3, 5)), get_relative_position_index(3, 5))


def test_relative_index_of_subwindow_reads_the_right_offsets():
    """A window clipped to 2x3 inside a table for 4x4 must read the same relative offsets as a 2x3 table."""
    big, small = (4, 4), (2, 3)
    idx = relative_position_index(small, big)
    # offsets (dy, dx) of the big table, flattened with stride 2*4-1
    dy, dx = torch.div(idx, 7, rounding_mode="floor") - 3, idx % 7 - 3
    ref = relative_position_index(small)
    rdy, rdx = torch.div(ref, 5, rounding_mode="floor") - 1, ref % 5 - 2
    assert torch.equal(dy, rdy) and torch.equal(dx, rdx)


@pytest.mark.parametrize("padded,window,shift", [((8, 8, 8), (4, 4, 4), (2, 2, 2)), ((14, 7, 21), (7, 7, 7), (3, 0, 3)),
                                                 ((8, 12), (4, 4), (2, 2))])
def test_shifted_window_mask_matches_monai(padded, window, shift):
    from monai.networks.nets.swin_unetr import compute_mask

    ref = compute_mask(list(padded), window, shift, None)
    torch.testing.assert_close(shifted_window_mask(padded, window, shift), ref)


@pytest.mark.parametrize("size,shift", [((7, 10, 6), True), ((3, 9, 4), True), ((8, 8, 8), False), ((6, 12, 5), True)])
def test_window_attention_matches_monai_block(size, shift):
    """Padding, cyclic shift, masks and truncated tables as MONAI's ``SwinTransformerBlock.forward_part1``."""
    import numpy as np
    from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask, get_window_size

    win = (4, 4, 4) if size != (6, 12, 5) else (7, 7, 7)
    sh = tuple(w // 2 for w in win) if shift else (0, 0, 0)
    ref = SwinTransformerBlock(24, 3, win, sh).eval()
    ours = WindowAttention(24, 3, win, shift=shift, spatial_dims=3, clip_mode="truncate").eval()
    ours.load_state_dict({k[5:]: v for k, v in ref.state_dict().items()
                          if k.startswith("attn.") and "index" not in k})
    ws, ss = get_window_size(size, win, sh)
    mask = compute_mask([int(np.ceil(s / w)) * w for s, w in zip(size, ws)], ws, ss, None)
    x = torch.randn(2, *size, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(ref.norm1(x)), ref.forward_part1(x, mask), rtol=1e-5, atol=1e-5)


def test_clip_modes_differ_only_for_clipped_windows():
    a = WindowAttention(8, 2, 4, shift=True, spatial_dims=2, clip_mode="relative").eval()
    b = WindowAttention(8, 2, 4, shift=True, spatial_dims=2, clip_mode="truncate").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 8, 8, 8)
        torch.testing.assert_close(a(x), b(x))  # full windows: identical
        x = torch.randn(1, 3, 3, 8)  # clipped to 3x3
        assert (a(x) - b(x)).abs().max() > 1e-4


def test_relative_clip_equals_a_smaller_table():
    """``relative`` on a window clipped to 3x3 == a 3x3 window whose table is the matching sub-table."""
    big = WindowAttention(8, 2, 5, spatial_dims=2).eval()
    small = WindowAttention(8, 2, 3, spatial_dims=2).eval()
    table = big.relative_position_bias_table.detach().view(9, 9, 2)[2:7, 2:7].reshape(25, 2)
    small.load_state_dict({**big.state_dict(), "relative_position_bias_table": table})
    x = torch.randn(2, 3, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x))


def test_resize_rel_pos_table_keeps_centre_and_shape():
    t = torch.randn(49, 3)
    assert resize_rel_pos_table(t, (4, 4)).shape == (49, 3)
    out = resize_rel_pos_table(t, (7, 7))
    assert out.shape == (169, 3)
    t3 = torch.ones(27, 2)
    torch.testing.assert_close(resize_rel_pos_table(t3, (3, 3, 3)), torch.ones(125, 2))
    with pytest.raises(ValueError, match="cannot infer"):
        resize_rel_pos_table(torch.randn(10, 2), (3, 3))


@pytest.mark.parametrize("dims", [2, 3])
def test_patch_merging_order_matches_reference(dims):
    if dims == 3:
        from monai.networks.nets.swin_unetr import PatchMerging as Ref

        ref = Ref(6, spatial_dims=3)
        x = torch.randn(2, 5, 4, 6, 6)  # odd depth is padded
    else:
        from timm.models.swin_transformer import PatchMerging as Ref

        ref = Ref(6)
        x = torch.randn(2, 4, 6, 6)
    ours = PatchMerging(6, spatial_dims=dims)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x), ref(x))


def test_window_attention_ill_args():
    with pytest.raises(ValueError, match="divisible"):
        WindowAttention(10, 3, 4)
    with pytest.raises(ValueError, match="clip_mode"):
        WindowAttention(8, 2, 4, clip_mode="crop")
    with pytest.raises(ValueError, match="3D grid"):
        WindowAttention(8, 2, 4, spatial_dims=3)(torch.randn(1, 4, 4, 8))


# -------------------------------------------------------------------------------------------------- the model
def test_swin2d_shapes_and_levels():
    m = create_model("swin_tiny_patch4_window7_224", **_T2D).eval()
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 5)
    assert m.forward_features(x).shape == (2, 4, 4, 32)  # channels last
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 32)
    feats = m.forward_intermediates(x, intermediates_only=True)
    assert [f.shape for f in feats] == [(2, 16, 8, 8), (2, 16, 8, 8), (2, 32, 4, 4)]
    assert [i["num_chs"] for i in m.feature_info] == [16, 16, 32]
    assert [i["reduction"] for i in m.feature_info] == [4, 4, 8]
    final, last = m.forward_intermediates(x, indices=1, output_fmt="NLC", norm=True)
    torch.testing.assert_close(last[0], final.flatten(1, 2))
    early = m.forward_intermediates(x, indices=[1], stop_early=True, output_fmt="NHWC", intermediates_only=True)
    torch.testing.assert_close(early[0], feats[1].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="output_fmt"):
        m.forward_intermediates(x, output_fmt="CHW", intermediates_only=True)


def test_swin3d_shapes_levels_and_odd_input():
    m = create_model("swin3d_tiny_patch2_window7_96", **_T3D).eval()
    assert m.downsample_last and m.num_classes == 0
    x = torch.randn(1, 1, 16, 16, 16)
    feats = m.forward_intermediates(x, output_fmt="NCDHW", intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(12, 8, 8, 8), (24, 4, 4, 4), (48, 2, 2, 2)]
    assert m(x).shape == (1, 48)
    # sizes that are not multiples of the window or of 2 at every stage still run (padding)
    feats = m.forward_intermediates(torch.randn(1, 1, 14, 22, 10), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(7, 11, 5), (4, 6, 3), (2, 3, 2)]


def test_non_default_size_and_window_clip_tables_like_timm():
    m = create_model("swin_tiny_patch4_window7_224", img_size=(48, 64), window_size=8, depths=(2, 2, 2),
                     num_heads=(1, 2, 4), embed_dim=8)
    # stage grids 12x16, 6x8, 3x4: windows (8,8), (6,8), (3,4); the later blocks do not shift
    wins = [s.blocks[1].attn.window_size for s in m.layers]
    assert wins == [(8, 8), (6, 8), (3, 4)]
    assert m.layers[2].blocks[0].attn.relative_position_bias_table.shape == (5 * 7, 4)
    assert m(torch.randn(1, 3, 48, 64)).shape == (1, 1000)


def test_grad_checkpointing_is_equivalent():
    m = create_model("swin3d_tiny_patch2_window7_96", **_T3D, drop_path_rate=0.0)
    x = torch.randn(1, 1, 16, 16, 16)
    y0 = m(x)
    y0.square().sum().backward()
    g0 = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    m.set_grad_checkpointing()
    assert all(s.grad_checkpointing for s in m.layers)
    y1 = m(x)
    y1.square().sum().backward()
    torch.testing.assert_close(y1, y0)
    for n, p in m.named_parameters():
        if n in g0:
            torch.testing.assert_close(p.grad, g0[n], rtol=1e-4, atol=1e-6)


def test_block_fn_and_norm_injection():
    seen = []

    class Norm(torch.nn.LayerNorm):
        def __init__(self, dim):
            super().__init__(dim, eps=1e-6)
            seen.append(dim)

    m = SwinTransformer(img_size=32, embed_dim=8, depths=(1, 1), num_heads=(1, 1), window_size=4, num_classes=0,
                        norm_layer=Norm, act_layer=torch.nn.ReLU)
    assert 8 in seen and 32 in seen  # block norms and the 4*C merge norm
    assert isinstance(m.layers[0].blocks[0].mlp.act, torch.nn.ReLU)
    assert m.layers[0].blocks[0].norm1.eps == 1e-6


@pytest.mark.parametrize("kwargs,match", [
    (dict(depths=(2, 2), num_heads=(1,)), "one entry per stage"),
    (dict(embed_dim=10, num_heads=(3, 6)), "divisible by num_heads"),
    (dict(clip_mode="crop"), "clip_mode"),
    (dict(spatial_dims=4), "spatial_dims"),
    (dict(depths=(2, 0), num_heads=(1, 2)), "at least one block"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
])
def test_ill_args(kwargs, match):
    base = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4)
    with pytest.raises(ValueError, match=match):
        SwinTransformer(**{**base, **kwargs})


def test_no_weight_decay_and_reset_classifier():
    m = create_model("swin_tiny_patch4_window7_224", **_T2D)
    assert m.no_weight_decay() == {n for n, _ in m.named_parameters() if n.endswith("relative_position_bias_table")}
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_param_counts_at_paper_configs():
    """Swin-T/S/B at 224 with the 1000-class head (arXiv:2103.14030 Table 1: 28M / 50M / 88M; timm 28.3/49.6/87.8M)."""
    with torch.device("meta"):
        counts = {n: sum(p.numel() for p in create_model(n).parameters()) / 1e6 for n in
                  ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224")}
    assert counts == pytest.approx({"swin_tiny_patch4_window7_224": 28.29, "swin_small_patch4_window7_224": 49.61,
                                    "swin_base_patch4_window7_224": 87.77}, abs=0.01)


def test_block_is_the_shared_block():
    from backbones.layers import Block

    m = create_model("swin3d_tiny_patch2_window7_96", **_T3D)
    blk = m.layers[0].blocks[1]
    assert type(blk) is Block and isinstance(blk.attn, WindowAttention) and blk.attn.shift_size == (2, 2, 2)
    assert m.layers[0].blocks[0].attn.shift_size == (0, 0, 0)

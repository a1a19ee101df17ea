"""Gated axial attention (MedT, arXiv:2102.10662) and the axial-attention encoders of ``backbones``.

The SDPA implementation is checked against a direct per-position evaluation of MedT's Eq. 2 (written here with
explicit loops), including the relative-table indexing convention of the official code, shorter axes than the
table span and both axes.
"""

from __future__ import annotations

from typing import List

import pytest
import torch

from backbones import create_model
from backbones.layers.axial_attention import AxialAttention, relative_table

__all__: List[str] = []


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(attn: AxialAttention, x: torch.Tensor) -> torch.Tensor:
    """MedT Eq. 2 evaluated position by position (eval mode), then the layer's output norm."""
    B, _, H, W = x.shape
    g, d = attn.num_heads, attn.head_dim
    dq = d // 2
    qkv = attn.norm_qkv(attn.qkv(x)).reshape(B, g, 2 * d, H, W)  # channel layout: per head [q | k | v]
    if attn.axis == "width":
        qkv = qkv.transpose(-1, -2)  # the attended axis becomes dim 3
    L = qkv.shape[3]
    R = attn.relative.detach()
    span = (R.shape[1] + 1) // 2
    gq, gk, gv2, gv1 = (p.item() for p in (attn.f_qr, attn.f_kr, attn.f_sve, attn.f_sv))
    q, k, v = qkv[:, :, :dq], qkv[:, :, dq:2 * dq], qkv[:, :, 2 * dq:]  # (B, g, c, L, cols)
    rq, rk, rv = (t[None, None, :, :, None] for t in (R[:dq], R[dq:2 * dq], R[2 * dq:]))  # (1, 1, c, 2span-1, 1)
    logits = torch.zeros(B, g, L, L, qkv.shape[4])  # (B, g, i, j, cols)
    for i in range(L):
        for j in range(L):
            logits[:, :, i, j] = ((q[:, :, :, i] * k[:, :, :, j]).sum(2)
                                  + gq * (q[:, :, :, i] * rq[:, :, :, i - j + span - 1]).sum(2)
                                  + gk * (k[:, :, :, j] * rk[:, :, :, j - i + span - 1]).sum(2)) / dq ** 0.5
    p = logits.softmax(dim=3)
    out = torch.zeros(B, g, d, L, qkv.shape[4])
    for i in range(L):
        for j in range(L):
            out[:, :, :, i] += p[:, :, None, i, j] * (gv1 * v[:, :, :, j] + gv2 * rv[:, :, :, i - j + span - 1])
    if attn.axis == "width":
        out = out.transpose(-1, -2)
    return attn.norm_out(out.reshape(B, g * d, H, W))


@pytest.mark.parametrize("axis,size", [("height", (6, 5)), ("width", (5, 6)), ("height", (4, 3))])
def test_gated_axial_attention_matches_eq2(axis: str, size) -> None:
    torch.manual_seed(0)
    attn = AxialAttention(8, num_heads=2, axis=axis, span=6, gate_init=(0.3, 0.7, 0.5, 0.9)).eval()
    with torch.no_grad():  # move the norms off identity so the reference checks their use too
        for bn in (attn.norm_qkv, attn.norm_out):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _reference(attn, x), rtol=1e-4, atol=1e-5)


def test_relative_table_indexing_and_resampling() -> None:
    table = torch.arange(7.0)[None]  # span 4: offsets -3..3, offset 0 at column 3
    t3 = relative_table(table, 3)[0]
    assert t3[0, 0] == 3 and t3[2, 0] == 5 and t3[0, 2] == 1  # out[i, j] = table[i - j + span - 1]
    t6 = relative_table(table, 6)[0]  # longer axis: linear resampling to 11 offsets
    assert t6.shape == (6, 6)
    torch.testing.assert_close(t6.diagonal(), torch.full((6,), 3.0))  # offset 0 stays the table centre
    assert t6[5, 0] == 6 and t6[0, 5] == 0  # extreme offsets map to the table ends


def test_gates_trainable_and_receive_gradients() -> None:
    torch.manual_seed(0)
    attn = AxialAttention(8, num_heads=2, span=8)
    assert [p.item() for p in (attn.f_qr, attn.f_kr, attn.f_sve, attn.f_sv)] == pytest.approx([0.1, 0.1, 0.1, 1.0])
    out = attn(torch.randn(2, 8, 8, 8))
    (out * torch.randn_like(out)).sum().backward()
    for name in ("f_qr", "f_kr", "f_sve", "f_sv", "relative"):
        p = getattr(attn, name)
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_stride_and_no_positional_variant() -> None:
    attn = AxialAttention(8, 16, num_heads=4, axis="width", rel_pos=False, gated=False, stride=2)
    assert attn.relative is None and attn.f_qr is None
    assert attn(torch.randn(1, 8, 8, 12)).shape == (1, 16, 4, 6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=8, out_dim=12, num_heads=4), "even head width"),
    (dict(dim=8, num_heads=2, axis="depth", span=4), "axis"),
    (dict(dim=8, num_heads=2, span=None), "span"),
    (dict(dim=8, num_heads=2, rel_pos=False, gated=True), "gated"),
    (dict(dim=8, num_heads=2, span=4, gate_init=(0.1, 0.1)), "gate_init"),
])
def test_attention_bad_args(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AxialAttention(**kwargs)


def test_encoder_intermediates_and_other_sizes() -> None:
    torch.manual_seed(0)
    enc = create_model("gated_axial_tiny", img_size=32, layers=(1, 1, 1), num_classes=3).eval()
    assert [f["num_chs"] for f in enc.feature_info] == [32, 64, 128]
    with torch.no_grad():
        for size in (32, 16, 48):  # built for 32: shorter axes slice the tables, longer ones resample them
            final, feats = enc.forward_intermediates(torch.randn(1, 3, size, size))
            assert [tuple(f.shape[1:]) for f in feats] == [(32, size // 2, size // 2), (64, size // 4, size // 4),
                                                           (128, size // 8, size // 8)]
            assert final is feats[-1]
        last = enc.forward_intermediates(torch.randn(2, 3, 32, 32), indices=1, output_fmt="NHWC",
                                         intermediates_only=True)
        assert len(last) == 1 and last[0].shape == (2, 4, 4, 128)
        assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_encoder_spans_and_param_counts() -> None:
    """MedT's s=0.125 encoders at 128 px: the official ``kernel_size`` schedule (img/2; img/2 then img/4; img/4
    then img/8; img/8) and gated = plain + 4 gates per attention layer, plain = no-pos + the relative tables."""
    models = {n: create_model(n, num_classes=0) for n in ("gated_axial_tiny", "axial_tiny", "axial_nopos_tiny")}
    spans = [[blk.height_block.span for blk in stage] for stage in models["gated_axial_tiny"].stages]
    assert spans == [[64], [64, 32], [32, 16, 16, 16], [16]]
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    attn = [m for m in models["axial_tiny"].modules() if isinstance(m, AxialAttention)]
    assert counts["gated_axial_tiny"] - counts["axial_tiny"] == 4 * len(attn) == 4 * 2 * 8
    tables = sum(2 * a.head_dim * (2 * a.span - 1) for a in attn)
    assert counts["axial_tiny"] - counts["axial_nopos_tiny"] == tables

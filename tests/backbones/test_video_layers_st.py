"""Space-time video blocks: TimeSformer divided attention, ViViT factorised self-attention and dot-product attention.

The factorised layers are checked against the same weights run as *joint* attention with structured boolean masks
(same frame / same spatial location), an independent formulation of what "attend over space / over time" means.
"""

from __future__ import annotations

import pytest
import torch

from backbones.layers import Attention
from backbones.layers.divided_st_attention import DividedSpaceTimeBlock, SpaceTimeBlock, fold_time, unfold_time
from backbones.layers.factorized_attention import (FactorisedDotProductAttention, FactorisedDotProductBlock,
                                                   FactorisedSelfAttentionBlock)
from vtk_testing import randomize_

THW = (3, 2, 2)  # T, H, W
T, N = THW[0], THW[1] * THW[2]
L = T * N


def _masks() -> tuple:
    """Boolean (L, L) masks over (t, h, w)-ordered tokens: same frame, same spatial location."""
    t = torch.arange(L) // N
    n = torch.arange(L) % N
    return t[:, None] == t[None], n[:, None] == n[None]


def _randomise(module: torch.nn.Module) -> None:
    torch.manual_seed(3)
    randomize_(module, 0.3)


def test_fold_unfold_roundtrip() -> None:
    x = torch.randn(2, L, 5)
    y = fold_time(x, THW)  # (B*N, T, C)
    assert y.shape == (2 * N, T, 5)
    # token (t, n) of clip b lands at row b*N + n, position t
    assert torch.equal(y[1 * N + 3, 2], x[1, 2 * N + 3])
    assert torch.equal(unfold_time(y, THW), x)


def test_fdp_attention_equals_masked_joint_attention() -> None:
    torch.manual_seed(0)
    fdp = FactorisedDotProductAttention(16, num_heads=4).eval()
    joint = Attention(16, num_heads=4).eval()
    _randomise(fdp)
    joint.load_state_dict(fdp.state_dict())
    same_frame, same_loc = _masks()
    # scenic head order: heads [0, H/2) attend along time, [H/2, H) along space
    mask = torch.stack([same_loc, same_loc, same_frame, same_frame])[None]  # (1, H, L, L)
    x = torch.randn(2, L, 16)
    torch.testing.assert_close(fdp(x, THW), joint(x, attn_mask=mask), rtol=1e-5, atol=1e-5)
    swapped = torch.stack([same_frame, same_frame, same_loc, same_loc])[None]
    assert (fdp(x, THW) - joint(x, attn_mask=swapped)).abs().max() > 1e-3


@pytest.mark.parametrize("order", ["space_time", "time_space"])
def test_fsa_block_equals_masked_steps(order: str) -> None:
    torch.manual_seed(0)
    blk = FactorisedSelfAttentionBlock(16, num_heads=2, attention_order=order).eval()
    _randomise(blk)
    same_frame, same_loc = _masks()
    x = torch.randn(2, L, 16)

    def space(y):
        return y + blk.attn(blk.norm1(y), attn_mask=same_frame)

    def time(y):
        return y + blk.temporal_attn(blk.temporal_norm1(y), attn_mask=same_loc)

    y = time(space(x)) if order == "space_time" else space(time(x))
    ref = y + blk.mlp(blk.norm2(y))
    torch.testing.assert_close(blk(x, THW), ref, rtol=1e-5, atol=1e-5)


def _divided_reference(blk: DividedSpaceTimeBlock, x: torch.Tensor) -> torch.Tensor:
    """The official divided block written with masks on the full (1 + T*N) sequence."""
    same_frame, same_loc = _masks()
    cls, tok = x[:, :1], x[:, 1:]
    tok = tok + blk.temporal_fc(blk.temporal_attn(blk.temporal_norm1(tok), attn_mask=same_loc))
    res = []
    for t in range(T):  # spatial attention of frame t with its own copy of the class token
        seq = torch.cat([cls, tok[:, t * N:(t + 1) * N]], dim=1)
        res.append(blk.attn(blk.norm1(seq)))
    cls_res = torch.stack([r[:, 0] for r in res], dim=1).mean(dim=1, keepdim=True)
    y = torch.cat([cls, tok], dim=1) + torch.cat([cls_res] + [r[:, 1:] for r in res], dim=1)
    return y + blk.mlp(blk.norm2(y))


def test_divided_block_matches_reference() -> None:
    torch.manual_seed(0)
    blk = DividedSpaceTimeBlock(16, num_heads=2).eval()
    _randomise(blk)
    x = torch.randn(2, 1 + L, 16)
    torch.testing.assert_close(blk(x, THW), _divided_reference(blk, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [1, 0])
def test_divided_block_equals_the_layout_before_issue_14_with_drop_path(cls: int) -> None:
    """The copy-saving forward is the same function as the old fold/unfold/cat forward, stochastic depth included
    (one draw per clip shared by the class token and the grid, the same random stream)."""
    from benchmarks.speed_fixes import divided_forward_before

    torch.manual_seed(0)
    blk = DividedSpaceTimeBlock(16, num_heads=2, drop_path=0.5, init_values=0.5).train()
    _randomise(blk)
    x = torch.randn(4, cls + L, 16)
    torch.manual_seed(7)
    new = blk(x, THW)
    torch.manual_seed(7)
    old = divided_forward_before(blk, x, THW)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    torch.manual_seed(8)  # another draw drops other clips: the comparison sees the stochastic depth
    assert (divided_forward_before(blk, x, THW) - new).abs().max() > 1e-3


def test_divided_block_init_and_no_cls() -> None:
    blk = DividedSpaceTimeBlock(16, num_heads=2)
    assert blk.temporal_fc.weight.abs().sum() == 0 and blk.temporal_fc.bias.abs().sum() == 0  # official zero init
    x = torch.randn(2, L, 16)
    assert blk(x, THW).shape == (2, L, 16)
    # frames shuffled -> tokens shuffled the same way (no positional information inside the block)
    _randomise(blk)
    xc = torch.randn(2, 1 + L, 16)
    perm = torch.tensor([2, 0, 1])
    idx = torch.cat([torch.zeros(1, dtype=torch.long), 1 + (perm[:, None] * N + torch.arange(N)).flatten()])
    torch.testing.assert_close(blk(xc[:, idx], THW), blk(xc, THW)[:, idx], rtol=1e-5, atol=1e-5)


def test_blocks_backward_and_shapes() -> None:
    torch.manual_seed(0)
    for blk, n in [(DividedSpaceTimeBlock(16, 2, drop_path=0.1), 1 + L), (SpaceTimeBlock(16, 2), 1 + L),
                   (FactorisedSelfAttentionBlock(16, 2, drop_path=0.1), L), (FactorisedDotProductBlock(16, 2), L)]:
        x = torch.randn(2, n, 16, requires_grad=True)
        y = blk(x, THW)
        assert y.shape == x.shape
        y.sum().backward()
        assert torch.isfinite(x.grad).all()


def test_ill_args() -> None:
    with pytest.raises(ValueError, match="even num_heads"):
        FactorisedDotProductAttention(18, num_heads=3)
    with pytest.raises(ValueError, match="attention_order"):
        FactorisedSelfAttentionBlock(16, 2, attention_order="spacetime")
    with pytest.raises(ValueError, match="no class token"):
        FactorisedSelfAttentionBlock(16, 2)(torch.randn(1, 1 + L, 16), THW)
    with pytest.raises(ValueError, match="tokens"):
        DividedSpaceTimeBlock(16, 2)(torch.randn(1, L + 2, 16), THW)
    with pytest.raises(ValueError, match="attn_bias"):
        FactorisedDotProductAttention(16, 2)(torch.randn(1, L, 16), THW, attn_mask=torch.ones(L, L, dtype=torch.bool))

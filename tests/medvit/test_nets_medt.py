"""MedT (Valanarasu et al., arXiv:2102.10662): size, input-size independence, batched local branch, gates."""

from __future__ import annotations

from typing import List

import pytest
import torch

import medvit
from backbones.layers.axial_attention import AxialAttention
from medvit.nets.medt import MedT

__all__: List[str] = []


pytestmark = pytest.mark.usefixtures("one_thread")


def _small(**kw) -> MedT:
    torch.manual_seed(0)
    args = dict(img_size=64, layers=(1, 1, 1, 1), local_patches=2)
    args.update(kw)
    return medvit.create_model("medt", **args)


def test_paper_config_param_count() -> None:
    """Paper config (128 px, s=0.125, layers [1, 2, 4, 1], 4x4 patches): 1.3-1.6M (official code: 1,560,140 with
    35,570 in never-called modules, see test_nets_medt_official.py; one user's log: 1,326,850)."""
    with torch.device("meta"):
        net = medvit.create_model("medt")
    n = sum(p.numel() for p in net.parameters())
    assert 1.3e6 < n < 1.6e6, n
    assert net.spatial_dims == 2 and net.local_patches == 4 and net.img_size == 128
    assert len(net.global_branch.stages) == 2 and [len(s) for s in net.local_branch.stages] == [1, 2, 4, 1]


@pytest.mark.parametrize("size", [64, 128, 96])
def test_runs_at_other_input_sizes(size: int) -> None:
    """Built for 64 px, runs at 64, 96 (longer axes: resampled tables) and 128 px; 1-channel input allowed."""
    net = _small(in_chans=1, num_classes=3).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, size, size))
    assert out.shape == (1, 3, size, size) and torch.isfinite(out).all()


def test_non_square_input() -> None:
    net = _small().eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 32)).shape == (1, 2, 64, 32)


def test_local_branch_equals_per_patch_loop() -> None:
    """The batched local branch equals running each patch separately, as the official double loop does."""
    net = _small().eval()
    x = torch.randn(2, 3, 64, 64)
    n, p = net.local_patches, 64 // net.local_patches
    with torch.no_grad():
        batched = net._local(x)
        for i in range(n):
            for j in range(n):
                patch = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
                feats = net.local_branch.forward_intermediates(patch, intermediates_only=True)
                ref = net.local_decoder(feats, (p, p))
                torch.testing.assert_close(batched[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p], ref)


def test_gates_trainable_from_the_start() -> None:
    """Unlike the official code (gates created with requires_grad=False), every gate trains from step one. With the
    Eq. 2 attention: in training mode the official per-term BatchNorms divide the gates out (gradients ~1e-9)."""
    net = _small(attn_variant="eq2").train()
    gated = [m for m in net.global_branch.modules() if isinstance(m, AxialAttention)]
    assert gated and all(m.f_qr is not None for m in gated)
    assert all(m.f_qr is None and m.relative is None
               for m in net.local_branch.modules() if isinstance(m, AxialAttention))
    out = net(torch.randn(2, 3, 64, 64))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 64, 64))).backward()
    for m in gated:
        for name in ("f_qr", "f_kr", "f_sve", "f_sv"):
            p = getattr(m, name)
            assert p.requires_grad and p.grad is not None and p.grad.abs() > 0, name


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=100), "multiple of 64"),
    (dict(local_patches=0), "local_patches"),
    (dict(global_stages=5), "global_stages"),
    (dict(attn_variant="paper"), "attn_variant"),
])
def test_bad_arguments(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MedT(**kwargs)


def test_bad_input_size_message() -> None:
    net = _small()
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(1, 3, 48, 48))

"""The patch embedding's matrix-multiply path is the strided convolution it replaces (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from backbones.layers import PatchEmbed
from backbones.layers.patch_embed import TubeletEmbed
from vtk_testing import autograd_nodes as _graph


def _conv_reference(pe: PatchEmbed, x: torch.Tensor) -> torch.Tensor:
    conv = F.conv2d if pe.spatial_dims == 2 else F.conv3d
    y = conv(x, pe.proj.weight, pe.proj.bias, stride=pe.patch_size)  # (B, C, *grid)
    return y.flatten(2).transpose(1, 2) if pe.flatten else y.movedim(1, -1)


@pytest.mark.parametrize("make, shape", [
    (lambda: PatchEmbed(None, (4, 2), 3, 8, spatial_dims=2), (2, 3, 8, 6)),
    (lambda: PatchEmbed(None, (2, 4, 3), 2, 8, spatial_dims=3, flatten=False), (1, 2, 4, 8, 9)),
    (lambda: TubeletEmbed(None, 4, tubelet_size=2, num_frames=None, in_chans=3, embed_dim=8), (2, 3, 4, 8, 12)),
])
def test_linear_patchify_equals_the_strided_conv(make, shape):
    torch.manual_seed(0)
    pe = make()
    assert pe.non_overlapping
    x = torch.randn(shape, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _conv_reference(pe, x)
        out = pe(x)  # the matmul path (CPU autocast)
    assert out.shape == ref.shape and "ConvolutionBackward0" not in _graph(out)
    torch.testing.assert_close(out.float(), ref.float(), atol=0.05, rtol=0.02)  # bf16 products, fp32 sums
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, pe.proj.weight, pe.proj.bias], g)
    grads_ref = torch.autograd.grad(ref, [x, pe.proj.weight, pe.proj.bias], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=0.1, rtol=0.02)
    # exact in fp32: the same patch rows through the fp32 matmul equal the conv
    rows = pe._patchify(x.detach())
    lin = torch.nn.functional.linear(rows, pe.proj.weight.flatten(1), pe.proj.bias)
    torch.testing.assert_close(lin.flatten(1, -2) if pe.flatten else lin, _conv_reference(pe, x.detach()),
                               atol=1e-5, rtol=1e-5)


def test_overlapping_stem_keeps_the_convolution():
    pe = PatchEmbed(None, (2, 4, 4), 3, 8, spatial_dims=3, kernel_size=(3, 7, 7), padding=(1, 3, 3))
    assert not pe.non_overlapping
    x = torch.randn(1, 3, 4, 8, 8)
    y = F.conv3d(x, pe.proj.weight, pe.proj.bias, stride=pe.patch_size, padding=pe.padding)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "ConvolutionBackward0" in _graph(pe(x.requires_grad_()))
    torch.testing.assert_close(pe(x), y.flatten(2).transpose(1, 2))


def test_fp32_keeps_the_convolution():
    pe = PatchEmbed(None, 4, 3, 8, spatial_dims=2)
    graph = _graph(pe(torch.randn(1, 3, 8, 8, requires_grad=True)))
    assert "ConvolutionBackward0" in graph

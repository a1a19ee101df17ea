"""UNETR (Hatamizadeh et al., arXiv:2103.10504): MONAI parity, research-contributions checkpoints, derived taps."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import torch
from torch import nn

import medvit
from backbones._builder import load_pretrained
from engine.context import cpu_has_native_bf16
from engine.errors import UserError
from medvit.convert import UNETR_CONVERTERS
from medvit.convert.monai_unetr import convert_monai_unetr, is_monai_unetr
from medvit.nets.unetr import UNETR, unetr_taps
from vtk_testing import perturb_

__all__: List[str] = []

monai_nets = pytest.importorskip("monai.networks.nets")

SIZE = (32, 64, 48)  # non-cubic; MONAI's UNETR fixes patch 16 and 12 layers
CFG = dict(img_size=SIZE, feature_size=4, embed_dim=96, num_heads=4, mlp_ratio=2.0, num_classes=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def _monai(proj_type: str, size=SIZE) -> nn.Module:
    """A MONAI UNETR with every parameter moved off its init (LayerNorms are 1/0 at init: a swap would not show)."""
    torch.manual_seed(0)
    ref = monai_nets.UNETR(in_channels=1, out_channels=3, img_size=size, feature_size=4, hidden_size=96, mlp_dim=192,
                           num_heads=4, proj_type=proj_type)
    return perturb_(ref)


@pytest.fixture(scope="module")
def monai_perceptron() -> nn.Module:
    return _monai("perceptron")


@pytest.fixture(scope="module")
def x_ref(monai_perceptron: nn.Module):
    """A fixed input and the MONAI output on it."""
    x = torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return x, monai_perceptron(x)


def test_taps_and_stages_are_derived() -> None:
    assert unetr_taps(12, 4) == [3, 6, 9]  # MONAI's hidden_states_out[3], [6], [9]
    assert unetr_taps(24, 4) == [6, 12, 18] and unetr_taps(4, 3) == [1, 2]
    net = medvit.create_model("unetr", img_size=(16, 32, 24), patch_size=8, embed_dim=32, depth=4, num_heads=2,
                              feature_size=4, num_classes=2)
    assert net.num_stages == 3 and net.taps == [1, 2]
    names = {n for n, _ in net.named_children()}
    assert {"encoder1", "encoder2", "encoder3", "decoder4", "decoder3", "decoder2", "out"} <= names
    assert "encoder4" not in names and "decoder5" not in names
    x = torch.randn(1, 1, 16, 32, 24)
    out = net(x)
    assert out.shape == (1, 2, 16, 32, 24)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_monai_parity_perceptron_and_every_weight_used(monai_perceptron: nn.Module, x_ref) -> None:
    """Parity, and every parameter gets a non-zero gradient of a random projection of the output: with parity,
    a wrongly mapped tensor could only go unnoticed if it did not affect the output."""
    x, ref = x_ref
    ours = medvit.create_model("unetr", pretrained=monai_perceptron.state_dict(), **CFG).eval()
    out = ours(x)
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=1e-4)
    (out * torch.randn_like(out)).sum().backward()
    dead = [n for n, p in ours.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, dead


def test_monai_parity_conv() -> None:
    ref = _monai("conv")
    ours = medvit.create_model("unetr", pretrained=ref.state_dict(), proj_type="conv", **CFG).eval()
    x = torch.randn(1, 1, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-4)


def test_one_swapped_tensor_breaks_parity(monai_perceptron: nn.Module, x_ref) -> None:
    """The parity check fails when the converter maps one pair of same-shaped tensors crosswise."""
    x, ref = x_ref
    sd = convert_monai_unetr(monai_perceptron.state_dict(), UNETR(**CFG))
    sd["vit.blocks.5.norm1.weight"], sd["vit.blocks.5.norm2.weight"] = sd["vit.blocks.5.norm2.weight"], \
        sd["vit.blocks.5.norm1.weight"]
    ours = UNETR(**CFG)
    ours.load_state_dict(sd)
    with torch.no_grad():
        assert (ours.eval()(x) - ref).abs().max() > 1e-3


def _rc_file(tmp_path: Path, ref: nn.Module) -> Path:
    """A research-contributions training file: container, ``module.`` prefix, old class token and conv3."""
    sd: Dict[str, torch.Tensor] = {f"module.{k}": v for k, v in ref.state_dict().items()}
    sd["module.vit.patch_embedding.cls_token"] = torch.zeros(1, 1, 96)
    sd["module.encoder2.blocks.0.1.conv3.conv.weight"] = torch.zeros(8, 8, 1, 1, 1)
    path = tmp_path / "UNETR_model_best_acc.pth"
    torch.save({"epoch": 4999, "best_acc": 0.81, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}},
               path)
    return path


def test_research_contributions_checkpoint(tmp_path: Path, monai_perceptron: nn.Module, x_ref) -> None:
    x, ref = x_ref
    path = _rc_file(tmp_path, monai_perceptron)
    ours = UNETR(**CFG)
    report = load_pretrained(ours, path, UNETR_CONVERTERS)
    dropped = " ".join(report.dropped)
    assert "vit.cls_token" in dropped and "encoder2.blocks.0.1.conv3.conv.weight" in dropped
    assert report.converter == "monai" and not report.kept_init
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref, rtol=0, atol=1e-4)


def test_resized_checkpoint_and_bad_file(tmp_path: Path) -> None:
    """A checkpoint at a cubic ROI loads into another ROI (position table resampled trilinearly); a foreign file
    is a one-line UserError naming the file."""
    src = _monai("perceptron", size=(32, 32, 32))
    assert is_monai_unetr(src.state_dict())
    ours = medvit.create_model("unetr", pretrained=src.state_dict(), **CFG)
    assert ours.vit.pos_embed.shape == (1, 24, 96)
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(3)}, bad)
    with pytest.raises(UserError, match="bad.pth"):
        medvit.create_model("unetr", pretrained=bad, **CFG)


def test_paper_config_param_count() -> None:
    """ViT-B/16, 96^3, feature size 16, 14 classes: 92.6-92.8M (paper 92.58M; MONAI's count adds the unused
    ``norm_cross_attn`` LayerNorms)."""
    try:
        with torch.device("meta"):
            net = medvit.create_model("unetr")
    except RuntimeError:  # a layer that is not meta-constructible yet: build on CPU
        net = medvit.create_model("unetr")
    n = sum(p.numel() for p in net.parameters())
    assert 92.5e6 < n < 92.9e6, n
    assert net.taps == [3, 6, 9] and net.num_stages == 4 and net.spatial_dims == 3


@pytest.mark.parametrize("kwargs,match", [(dict(patch_size=12), "power-of-two"), (dict(proj_type="linear"),
                                                                                   "proj_type")])
def test_bad_arguments(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNETR(img_size=48, embed_dim=32, depth=2, num_heads=2, **kwargs)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("cls", [nn.InstanceNorm2d, nn.InstanceNorm3d])
def test_view_free_instance_norm_is_the_same_function_without_copyslices(batch: int, affine: bool, cls) -> None:
    from medvit.nets._common import view_free_instance_norms

    torch.manual_seed(0)
    stock = nn.Sequential(cls(5, affine=affine)).train()
    if affine:
        perturb_(stock)
    fast = nn.Sequential(cls(5, affine=affine)).train()
    fast.load_state_dict(stock.state_dict())
    assert view_free_instance_norms(fast) == 1 and isinstance(fast[0], cls) and type(fast[0]) is not cls
    assert list(fast.state_dict()) == list(stock.state_dict())
    x = torch.randn(batch, 5, *(7, 6, 5)[:cls._get_no_batch_dim(fast[0]) - 1]) * 3 + 1
    outs = []
    for m in (stock, fast):
        xx = x.clone().requires_grad_()
        y = torch.nn.functional.leaky_relu_(m(xx), 0.01)  # MONAI's in-place activation after the norm
        outs.append((y._is_view(), y.detach(), *torch.autograd.grad(y.square().sum(), [xx, *m.parameters()])))
    assert outs[0][0]  # the stock norm's output is a view: in-place ops on it rebase the graph on CopySlices
    assert not outs[1][0]
    for a, b in zip(outs[0][1:], outs[1][1:]):
        assert torch.equal(a, b)


def test_view_free_instance_norm_keeps_bf16_channels_last_and_fp32_exact() -> None:
    from medvit.nets._common import ViewFreeInstanceNorm3d

    cl = torch.channels_last_3d
    x = (torch.randn(1, 4, 24, 20, 16) * 2 + 5).contiguous(memory_format=cl)
    ref = nn.InstanceNorm3d(4)(x)
    out = ViewFreeInstanceNorm3d(4)(x)
    assert torch.equal(out, ref)  # fp32: made contiguous first, as instance_norm does
    out16 = ViewFreeInstanceNorm3d(4)(x.bfloat16())
    assert out16.is_contiguous(memory_format=cl) and not out16.is_contiguous()
    torch.testing.assert_close(out16.float(), ref, rtol=0, atol=0.05)  # bf16 output rounding


@pytest.mark.parametrize("grad", [True, False])
def test_view_free_instance_norm_keeps_a_bf16_channels_last_batch_channels_last(grad: bool) -> None:
    from medvit.nets._common import ViewFreeInstanceNorm3d

    torch.manual_seed(0)
    cl = torch.channels_last_3d
    x = (torch.randn(3, 4, 12, 10, 8) * 2 + 5).contiguous(memory_format=cl)
    stock, fast = nn.InstanceNorm3d(4, affine=True), ViewFreeInstanceNorm3d(4, affine=True)
    perturb_(stock)
    fast.load_state_dict(stock.state_dict())
    x32, x16 = x.clone().requires_grad_(), x.bfloat16().requires_grad_(grad)
    ref, out = stock(x32), fast(x16)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=cl) and not out.is_contiguous()
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=0.05)  # bf16 output rounding
    if grad:  # per-sample batch_norm: the instance norm's gradients, to bf16 rounding
        g = torch.randn(ref.shape)
        want = torch.autograd.grad(ref, [x32, *stock.parameters()], g)
        got = torch.autograd.grad(out, [x16, *fast.parameters()], g.bfloat16())
        assert got[0].is_contiguous(memory_format=cl)
        for a, b in zip(want, got):
            torch.testing.assert_close(b.float(), a, rtol=0.02, atol=0.02 * a.abs().max().item())


@pytest.mark.parametrize("native", [True, False])
def test_channels_last_decoder_needs_a_native_cpu_autocast(monkeypatch, native) -> None:
    import engine.context
    from medvit.nets._common import decoder_channels_last

    monkeypatch.setattr(engine.context, "cpu_has_native_bf16", lambda: native)
    x = torch.zeros(1, 1, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert decoder_channels_last(x) == native and not decoder_channels_last(x[0])  # 5-D maps only
    assert not decoder_channels_last(x)  # fp32


@pytest.mark.parametrize("batch", [1, 2])  # a batch of several: the norms keep the layout (sliding windows, crops)
def test_decoder_runs_channels_last_under_cpu_autocast_only(monkeypatch, batch: int) -> None:
    import medvit.nets.unetr as unetr_mod

    torch.manual_seed(0)
    net = UNETR(**CFG).train()
    perturb_(net)
    x = torch.randn(batch, 1, *SIZE, generator=torch.Generator().manual_seed(3))
    seen: List[torch.Tensor] = []
    for m in (net.encoder1.layer.conv1.conv, net.decoder2.conv_block.conv1.conv, net.encoder2.transp_conv_init.conv):
        m.register_forward_hook(lambda _m, _i, o: seen.append(o))
    cl = torch.channels_last_3d

    def run(autocast: bool):
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x)
        return out, [t.is_contiguous(memory_format=cl) and not t.is_contiguous() for t in seen]

    out, formats = run(True)
    native = cpu_has_native_bf16()  # oneDNN's bf16 convs; a CPU that emulates bf16 (AVX2) keeps NCDHW
    assert formats == [native] * 3 and out.is_contiguous() and out.dtype == torch.bfloat16
    out32, formats32 = run(False)
    assert formats32 == [False, False, False]
    monkeypatch.setattr(unetr_mod, "decoder_channels_last", lambda x: False)
    ncdhw, formats = run(True)
    # a batch's token maps are channels-last strided views ((B, C, N) transposed), which oneDNN keeps
    assert formats == [False, batch > 1, False]
    # the same bf16 function in the other memory format: bf16 rounding apart, not a different network
    err = (out.float() - ncdhw.float()).abs().max().item()
    scale = out32.abs().max().item()
    assert err <= 0.05 * scale, (err, scale)
    assert (out.float() - out32).abs().max().item() <= 0.1 * scale

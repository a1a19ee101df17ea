"""Swin-UNETR: parity with MONAI ``SwinUNETR`` (v1, v2, cubic and non-cubic), SSL ``model_swinvit.pt`` loading
against MONAI's ``load_from``, shapes and argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import medvit
from engine.context import cpu_has_native_bf16
from engine.errors import UserError
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR
from vtk_testing import perturb_

__all__: list = []

_TINY = dict(img_size=32, feature_size=12, depths=(1, 1, 1), num_heads=(3, 6, 12), num_classes=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(model):
    return perturb_(model, 0.1, seed=None)


def _pair(size, depths, norm_name="instance", use_v2=False, sd_edit=None):
    ref = MonaiSwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=depths, norm_name=norm_name,
                         use_v2=use_v2).eval()
    _randomize(ref.swinViT)  # spread the encoder weights; the decoder keeps MONAI's init (keys map one to one)
    sd = ref.state_dict()
    if sd_edit is not None:
        sd = sd_edit(dict(sd))
    ours = medvit.create_model("swin_unetr", pretrained=sd, img_size=size, feature_size=12, depths=depths,
                               num_classes=3, norm_name=norm_name, use_v2=use_v2).eval()
    return ref, ours


def _check_parity(ref, ours, x):
    """Logits and every encoder level (the decoder's instance/batch norms damp encoder errors in the logits)."""
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
        for a, b in zip(ours.forward_intermediates(x, intermediates_only=True), ref.swinViT(x, normalize=False)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# 32^3 needs a batch norm: with instance norm MONAI itself fails on the 1-voxel bottleneck
@pytest.mark.parametrize("size,depths,norm_name,use_v2", [
    ((32, 32, 32), (1, 1, 1, 1), "batch", False),
    ((32, 64, 32), (2, 2, 2, 2), "instance", True),
])
def test_monai_swin_unetr_parity(size, depths, norm_name, use_v2):
    ref, ours = _pair(size, depths, norm_name, use_v2)
    _check_parity(ref, ours, torch.randn(1, 1, *size))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_a_swapped_encoder_weight_breaks_parity():
    a, b = "swinViT.layers2.0.blocks.0.norm1.weight", "swinViT.layers2.0.blocks.0.norm2.weight"

    def swap(sd):
        sd[a], sd[b] = sd[b], sd[a]
        return sd

    ref, ours = _pair((32, 32, 32), (1, 1, 1, 1), "batch", sd_edit=swap)
    with pytest.raises(AssertionError):
        _check_parity(ref, ours, torch.randn(1, 1, 32, 32, 32))


def _ssl_file(path, ref):
    """What research-contributions' ``model_swinvit.pt`` holds: ``module.``-prefixed encoder keys, ``mlp.fc1/fc2``
    (MONAI says ``linear1/linear2``), the index buffers, and SSL heads that Swin-UNETR does not use."""
    sd = {}
    for k, v in ref.swinViT.state_dict().items():
        sd["module." + k.replace("mlp.linear1.", "mlp.fc1.").replace("mlp.linear2.", "mlp.fc2.")] = v.clone()
    sd["module.rotation_head.weight"] = torch.randn(4, 192)
    sd["module.contrastive_head.weight"] = torch.randn(512, 192)
    torch.save({"epoch": 100, "state_dict": sd}, path)
    return sd


def test_ssl_weights_load_like_monai_load_from(tmp_path):
    src = MonaiSwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(2, 2, 2, 2))
    _randomize(src.swinViT)
    path = tmp_path / "model_swinvit.pt"
    sd = _ssl_file(path, src)
    ref = MonaiSwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(2, 2, 2, 2)).eval()
    ref.load_from(torch.load(path, weights_only=True))
    ours = medvit.create_model("swin_unetr", img_size=32, feature_size=12, num_classes=3, norm_name="batch").eval()
    report = ours.load_pretrained(str(path))
    n_encoder = sum(1 for k in sd if "index" not in k and "_head" not in k)
    assert report.loaded == n_encoder and report.converter == "monai"
    assert any("decoder" in k for k in report.kept_init)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        hs = ref.swinViT(x, normalize=True)
        feats = [F.layer_norm(f, f.shape[-1:]).movedim(-1, 1)
                 for f in ours.forward_intermediates(x, output_fmt="NDHWC", intermediates_only=True)]
    for a, b in zip(feats, hs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_ssl_files_that_do_not_fit_raise(tmp_path):
    net = medvit.create_model("swin_unetr", **_TINY)
    empty = tmp_path / "other.pt"
    torch.save({"state_dict": {"module.backbone.conv.weight": torch.zeros(2, 2)}}, empty)
    with pytest.raises(UserError, match="other.pt"):
        net.load_pretrained(str(empty))
    src = MonaiSwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1))
    path = tmp_path / "ssl.pt"
    sd = _ssl_file(path, src)
    torch.save({"state_dict": {k: v for k, v in sd.items() if "layers2.0.blocks.0.attn.qkv" not in k}}, path)
    with pytest.raises(UserError, match="missing"):
        net.load_pretrained(str(path))
    with pytest.raises(UserError, match="download"):
        medvit.create_model("swin_unetr", pretrained=True, **_TINY)


def test_shapes_levels_and_ill_args():
    net = medvit.create_model("swin_unetr", **_TINY).eval()
    assert net.spatial_dims == 3
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (1, 3, 32, 32, 32)
        final, feats = net.forward_intermediates(x)
        torch.testing.assert_close(net.forward_head(final), out)
    assert [tuple(f.shape[1:]) for f in feats] == [(12, 16, 16, 16), (24, 8, 8, 8), (48, 4, 4, 4), (96, 2, 2, 2)]
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 1, 32, 24, 32))
    with pytest.raises(ValueError, match="img_size"):
        medvit.create_model("swin_unetr", img_size=40)
    with pytest.raises(ValueError, match="at least 2 stages"):
        medvit.create_model("swin_unetr", depths=(2,), num_heads=(3,))
    with pytest.raises(ValueError, match="drop_rate"):
        medvit.create_model("swin_unetr", drop_rate=1.5)


@pytest.mark.parametrize("feature_size,count", [(48, 62_187_296), (24, 15_703_304), (12, 4_078_220)])
def test_param_counts_match_monai(feature_size, count):
    """Swin-UNETR Base / Small / Tiny at 96^3, 14 classes (MONAI builds the same counts)."""
    with torch.device("meta"):
        net = medvit.create_model("swin_unetr", feature_size=feature_size)
    assert sum(p.numel() for p in net.parameters()) == count


def test_bf16_training_runs_a_channels_last_decoder_with_the_monai_gradients(monkeypatch):
    """Under CPU autocast the decoder's maps are channels-last and its norms view-free; the logits and the
    gradients are MONAI's (bf16 rounding apart), and the fp32 path stays NCDHW."""
    import medvit.nets.swin_unetr as mod
    from medvit.nets._common import ViewFreeInstanceNorm3d

    size = (32, 64, 32)
    ref, ours = _pair(size, (1, 1, 1, 1))
    ref.train(), ours.train()
    assert any(isinstance(m, ViewFreeInstanceNorm3d) for m in ours.modules())
    x = torch.randn(1, 1, *size)
    seen = []
    ours.decoder1.conv_block.conv1.conv.register_forward_hook(lambda _m, _i, o: seen.append(o))
    cl = torch.channels_last_3d

    def run(model, autocast):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        out.float().square().mean().backward()
        return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out, grads = run(ours, True)
    # channels-last where oneDNN runs the bf16 convs; a CPU that emulates bf16 (AVX2) keeps NCDHW
    assert (seen[-1].is_contiguous(memory_format=cl) and not seen[-1].is_contiguous()) == cpu_has_native_bf16()
    out_ref, grads_ref = run(ref, True)
    _, grads32 = run(ref, False)  # MONAI in fp32: the yardstick of bf16's own rounding
    scale = out_ref.abs().max().item()
    assert (out - out_ref).abs().max().item() <= 0.05 * scale
    pairs = [(n, n) for n in grads_ref if not n.startswith("swinViT.")]  # the decoder: MONAI's own keys
    assert len(pairs) > 20 and all(n in grads for n, _ in pairs)
    pairs += [("swinViT.layers.0.blocks.0.attn.relative_position_bias_table",  # the learned bias: through SDPA's mask
               "swinViT.layers1.0.blocks.0.attn.relative_position_bias_table")]
    for name, ref_name in pairs:  # vtk bf16 is as close to MONAI fp32 as MONAI bf16 is
        g, r, r32 = grads[name], grads_ref[ref_name], grads32[ref_name]
        assert (g - r32).norm() <= 1.5 * (r - r32).norm() + 0.02 * r32.norm(), name
    run(ours, False)
    assert seen[-1].is_contiguous()
    monkeypatch.setattr(mod, "decoder_channels_last", lambda x: False)
    run(ours, True)
    assert seen[-1].is_contiguous()

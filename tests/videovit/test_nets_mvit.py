"""MViT (Fan et al., arXiv:2104.11227): pytorchvideo / PySlowFast parity, interface and schedule tests."""

from __future__ import annotations

import pytest
import torch

import videovit
from backbones._builder import load_pretrained
from engine.errors import UserError
from videovit.convert import MVIT_CONVERTERS
from videovit.convert.pytorchvideo_mvit import convert_pytorchvideo_mvit, fuse_qkv
from videovit.nets.mvit import MViT, MViTStage

pv_vit = pytest.importorskip("pytorchvideo.models.vision_transformers")

# A non-default tiny pytorchvideo MViT: 3 stages (depths 1, 2, 1), kv stride adaptive (1, 4, 4).
PV_TINY = dict(spatial_size=32, temporal_size=4, depth=4, patch_embed_dim=16, num_heads=1,
               embed_dim_mul=[[1, 2.0], [3, 2.0]], atten_head_mul=[[1, 2.0], [3, 2.0]],
               pool_q_stride_size=[[1, 1, 2, 2], [3, 1, 2, 2]], pool_kv_stride_adaptive=[1, 4, 4],
               pool_kvq_kernel=[3, 3, 3], head_num_classes=7)
OURS_TINY = dict(img_size=32, num_frames=4, num_classes=7, embed_dim=16, num_heads=1, kv_stride=(1, 4, 4),
                 stages=(MViTStage(1), MViTStage(2, 2.0, 2.0, (1, 2, 2)), MViTStage(1, 2.0, 2.0, (1, 2, 2))))


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (pytorchvideo zero-inits position tables and biases); norm gains near 1."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1 and "norm" in n and n.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1))
    return model.eval()


def _ref_outputs(ref: torch.nn.Module, x: torch.Tensor):
    """pytorchvideo logits and the normalised tokens before its head."""
    cap = {}
    h = ref.norm_embed.register_forward_hook(lambda m, i, o: cap.__setitem__("tokens", o))
    with torch.no_grad():
        logits = ref(x)
    h.remove()
    return logits, cap["tokens"]


@pytest.fixture(scope="module")
def pv_tiny():
    torch.manual_seed(0)
    return _randomise(pv_vit.create_multiscale_vision_transformers(**PV_TINY))


@pytest.fixture(scope="module")
def clip():
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


def test_pytorchvideo_parity(pv_tiny, clip):
    ours = videovit.create_model("mvit_base_16x4", pretrained=pv_tiny.state_dict(), drop_path_rate=0.0,
                                 **OURS_TINY).eval()
    ref_logits, ref_tokens = _ref_outputs(pv_tiny, clip)
    with torch.no_grad():
        tokens = ours.forward_features(clip)
        logits = ours.forward_head(tokens)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cls, sep", [(False, True), (True, False)])
def test_pytorchvideo_parity_without_cls_or_sep_pos(cls, sep, clip):
    """Mean-pooled head without a CLS token, and the joint ``pos_embed`` table."""
    torch.manual_seed(0)
    ref = _randomise(pv_vit.create_multiscale_vision_transformers(**PV_TINY, cls_embed_on=cls, sep_pos_embed=sep))
    ours = MViT(**OURS_TINY, class_token=cls, sep_pos_embed=sep).eval()
    load_pretrained(ours, ref.state_dict(), MVIT_CONVERTERS)
    with torch.no_grad():
        torch.testing.assert_close(ours(clip), ref(clip), atol=1e-4, rtol=1e-4)


def test_every_weight_reaches_the_output(pv_tiny, clip):
    """With parity above, a wrong mapping of any tensor breaks the comparison: every loaded tensor (each fused
    q/k/v slice included) has a non-zero gradient of the compared outputs, i.e. perturbing it alone changes them.

    ``attn.norm_k.bias`` is the exception: adding one vector to every key shifts each query's scores by a
    constant, which softmax ignores (in pytorchvideo as in ours).
    """
    ours = MViT(**OURS_TINY).eval()
    load_pretrained(ours, pv_tiny.state_dict(), MVIT_CONVERTERS)
    tokens = ours.forward_features(clip[:1])
    g = torch.Generator().manual_seed(2)
    loss = (tokens * torch.randn(tokens.shape, generator=g)).sum() + ours.forward_head(tokens).sum()
    loss.backward()
    for name, p in ours.named_parameters():
        if name.endswith("norm_k.bias"):
            continue
        grads = p.grad.chunk(3) if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias") else [p.grad]
        assert all(gr.abs().max() > 1e-6 for gr in grads), name


def test_swapped_k_v_is_detected(pv_tiny, clip):
    sd = dict(pv_tiny.state_dict())
    sd["blocks.0.attn.k.weight"], sd["blocks.0.attn.v.weight"] = sd["blocks.0.attn.v.weight"], \
        sd["blocks.0.attn.k.weight"]
    ours = MViT(**OURS_TINY).eval()
    ours.load_state_dict(convert_pytorchvideo_mvit(sd, ours))
    with torch.no_grad():
        assert (ours(clip) - pv_tiny(clip)).abs().max() > 1e-3


def test_pyslowfast_layout(pv_tiny, clip):
    """PySlowFast names: fused qkv already, ``head.projection``, pos tables at the top level."""
    ours = MViT(**OURS_TINY).eval()
    native = convert_pytorchvideo_mvit(pv_tiny.state_dict(), ours)
    slowfast = {k.replace("head.", "head.projection."): v for k, v in native.items()}
    fresh = MViT(**OURS_TINY).eval()
    report = load_pretrained(fresh, slowfast, MVIT_CONVERTERS)
    assert report.converter == "pyslowfast_mvit"
    with torch.no_grad():
        torch.testing.assert_close(fresh(clip), pv_tiny(clip), atol=1e-4, rtol=1e-4)


def test_base_structure_matches_hub_config(monkeypatch):
    """mvit_base_16x4 has exactly the hub model's tensors (36.6M params incl. the 400-class head)."""
    from pytorchvideo.models.hub.vision_transformers import mvit_video_base_config

    monkeypatch.setattr(pv_vit, "init_net_weights", lambda *a, **k: None)  # shapes only: skip the slow init
    ref = pv_vit.create_multiscale_vision_transformers(**mvit_video_base_config)
    with torch.device("meta"):
        ours = videovit.create_model("mvit_base_16x4")
    conv = convert_pytorchvideo_mvit(ref.state_dict(), ours)
    sd = ours.state_dict()
    assert set(conv) == set(sd)
    assert all(conv[k].shape == sd[k].shape for k in sd)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters())
    assert abs(n / 1e6 - 36.6) < 0.1


def test_base_schedule_parity_narrow():
    """The full MViT-B block schedule (16 blocks, 4 stages, adaptive K/V strides, widths x8) at width 16 and
    4 x 64 x 64 input matches pytorchvideo's hub config built the same way."""
    from pytorchvideo.models.hub.vision_transformers import mvit_video_base_config

    cfg = dict(mvit_video_base_config, spatial_size=64, temporal_size=4, patch_embed_dim=16, head_num_classes=5)
    ref = _randomise(pv_vit.create_multiscale_vision_transformers(**cfg))
    ours = videovit.create_model("mvit_base_16x4", pretrained=ref.state_dict(), img_size=64, num_frames=4,
                                 embed_dim=16, num_classes=5).eval()
    assert len(ours.blocks) == 16 and ours.num_features == 128
    x = torch.randn(1, 3, 4, 64, 64)
    ref_logits, ref_tokens = _ref_outputs(ref, x)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref_tokens, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(x), ref_logits, atol=1e-4, rtol=1e-4)


def test_pos_embed_resampled_for_other_clip_size(pv_tiny):
    ours = videovit.create_model("mvit_base_16x4", pretrained=pv_tiny.state_dict(), drop_path_rate=0.0,
                                 **dict(OURS_TINY, img_size=48, num_frames=8))
    assert ours.pos_embed_spatial.shape[1] == 12 * 12 and ours.pos_embed_temporal.shape[1] == 4
    assert ours(torch.randn(1, 3, 8, 48, 48)).shape == (1, 7)


def test_bad_checkpoint_is_user_error():
    ours = MViT(**OURS_TINY)
    with pytest.raises(UserError):
        load_pretrained(ours, {"foo.weight": torch.zeros(3)}, MVIT_CONVERTERS)
    with pytest.raises(ValueError, match="q/k/v"):
        fuse_qkv({"blocks.0.attn.q.weight": torch.zeros(2, 2)})


def test_interface_and_intermediates(clip):
    torch.manual_seed(0)
    m = videovit.create_model("mvit_base_16x4", **videovit.registry.tiny_overrides("mvit_base_16x4")).eval()
    feats = m.forward_features(clip)
    assert feats.shape == (2, 1 + 2 * 1 * 1, 128)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 128)
    maps = m.forward_intermediates(clip, indices=[0, -1], intermediates_only=True)
    assert [tuple(t.shape) for t in maps] == [(2, 32, 2, 8, 8), (2, 128, 2, 1, 1)]  # block 0 widens 16->32
    toks = m.forward_intermediates(clip, indices=2, output_fmt="NLC", intermediates_only=True)
    assert [t.shape[-1] for t in toks] == [128, 128]  # block 2 widens 64 -> 128
    final, _ = m.forward_intermediates(clip, indices=1)
    torch.testing.assert_close(final, feats)
    with pytest.raises(ValueError):
        m.forward_intermediates(clip, indices=[9], intermediates_only=True)


def test_grad_checkpointing_equivalent(clip):
    torch.manual_seed(0)
    m = MViT(**OURS_TINY).eval()
    ref = m(clip).sum()
    ref.backward()
    g = m.patch_embed.proj.weight.grad.clone()
    m.zero_grad()
    m.set_grad_checkpointing(True)
    out = m(clip).sum()
    out.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(m.patch_embed.proj.weight.grad, g)


def test_ill_args():
    with pytest.raises(ValueError, match="depths"):
        videovit.create_model("mvit_base_16x4", depths=(1, 2))
    with pytest.raises(ValueError, match="stages"):
        MViT(stages=())
    with pytest.raises(ValueError, match="divisible"):
        MViT(img_size=32, num_frames=4, embed_dim=18, num_heads=4, **{"stages": (MViTStage(1),)})

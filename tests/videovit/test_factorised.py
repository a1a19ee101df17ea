"""FactorisedVideoEncoder: the spatial-per-frame -> temporal pattern of STAM (arXiv:2103.13915), ViViT model 2
(arXiv:2103.15691) and VTN (arXiv:2102.00719), with injected encoders and a flattened (shared) spatial registry."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import videovit
from backbones.models.vit import VisionTransformer
from videovit.nets.factorised import FactorisedVideoEncoder, TemporalBlocks
from videovit.nets.stam import STAM

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
NAMES = ["stam_16", "vivit_base_fe_16x2_224", "vtn_vit_base"]


def _clip(t: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, t, 32, 32, generator=torch.Generator().manual_seed(seed))  # (B, C, T, H, W)


class Mixer(nn.Module):
    """A temporal encoder that is no transformer: one linear layer over the sequence; counts its calls."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.proj(x).flip(1).cumsum(dim=1).flip(1)  # (B, L, D): token 0 sums the whole sequence


def _custom(**kw) -> FactorisedVideoEncoder:
    torch.manual_seed(0)
    vit = VisionTransformer(num_classes=0, **VIT)
    kw = {**dict(num_frames=4, num_classes=5, class_token=True, pos_embed=True), **kw}
    return FactorisedVideoEncoder(vit, Mixer(32), **kw).eval()


def _tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return videovit.create_model(name, **videovit.registry.tiny_overrides(name)).eval()


# --------------------------------------------------------------------------------------------------- injection
def test_injected_temporal_encoder_is_used():
    model = _custom()
    x = _clip()
    with torch.no_grad():
        out = model(x)
        vit = model.spatial_encoder
        frames = torch.stack([vit.forward_features(x[:, :, t])[:, 0] for t in range(4)], dim=1)  # (B, T, D)
        seq = torch.cat([model.temporal_cls_token.expand(2, -1, -1), frames], 1) + model.temporal_pos_embed
        ref = model.head(model.temporal.proj(seq).sum(1))
        torch.testing.assert_close(out, ref)
        assert model.temporal.calls == 1
        model.temporal.proj.weight.mul_(2.0)
        assert (model(x) - out).abs().max() > 1e-3  # the injected module's weights matter


def test_spatial_keys_are_flattened_so_an_image_vit_loads_as_is():
    model = _custom()
    vit = VisionTransformer(num_classes=0, **VIT)
    keys = set(model.state_dict())
    assert set(vit.state_dict()) <= keys  # cls_token, pos_embed, patch_embed.*, blocks.*, norm.* at the top level
    assert keys - set(vit.state_dict()) == {"temporal_cls_token", "temporal_pos_embed", "temporal.proj.weight",
                                            "temporal.proj.bias", "head.weight", "head.bias"}
    missing, unexpected = model.load_state_dict(vit.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("temporal", "head")) for k in missing)
    x = _clip()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_spatial(x)[:, 1], vit.forward_features(x[:, :, 1])[:, 0])
    assert model.no_weight_decay() == {"cls_token", "pos_embed", "temporal_cls_token", "temporal_pos_embed"}


def test_shared_registry_survives_copies_casts_and_assigned_loads():
    model = _custom()
    x = _clip()
    with torch.no_grad():
        ref = model(x)
        twin = copy.deepcopy(model)
        assert twin.spatial_encoder._parameters is twin._parameters
        twin.cls_token.add_(torch.randn(1, 1, 32))  # the copy's spatial encoder reads the copy's weights
        assert torch.equal(model(x), ref) and (twin(x) - ref).abs().max() > 1e-4
        torch.testing.assert_close(copy.deepcopy(model).double()(x.double()).float(), ref, atol=1e-5, rtol=1e-5)
        sd = {k: v * 1.01 for k, v in model.state_dict().items()}
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        a.load_state_dict(sd, assign=True)  # new Parameter objects: the spatial encoder must see them
        b.load_state_dict(sd)
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
        with torch.device("meta"):
            empty = STAM(**videovit.registry.tiny_overrides("stam_16"))
        stam = videovit.create_model("stam_16", **videovit.registry.tiny_overrides("stam_16")).eval()
        empty = empty.to_empty(device="cpu")
        empty.load_state_dict(stam.state_dict())
        torch.testing.assert_close(empty.eval()(x), stam(x), atol=0, rtol=0)
    assert not model.spatial_encoder.training  # train()/eval() reach the spatial encoder, which is no child
    model.train()
    assert model.spatial_encoder.training


def test_a_weighted_spatial_head_is_not_silently_replaced():
    with pytest.raises(ValueError, match="already has 'head'"):
        FactorisedVideoEncoder(VisionTransformer(num_classes=7, **VIT), Mixer(32), num_frames=4, num_classes=5)
    vit = VisionTransformer(num_classes=7, **VIT)  # passing the spatial head itself is fine (STAM does)
    model = FactorisedVideoEncoder(vit, Mixer(32), num_frames=4, num_classes=7, head=vit.head)
    assert model.head is vit.head


def test_pooling_and_mlp_head_pre_logits():
    head = nn.Sequential(nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 5))
    model = _custom(global_pool="avg", head=head, head_name="mlp")
    x = _clip()
    with torch.no_grad():
        feats = model.forward_features(x)  # (B, 1 + T, D)
        assert feats.shape == (2, 5, 32)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, head[:2](feats[:, 1:].mean(1)))
        torch.testing.assert_close(model(x), head(feats[:, 1:].mean(1)))
    assert model.get_classifier() is head and "mlp.2.weight" in model.state_dict()


def test_frame_chunks_do_not_change_the_result():
    model = _custom()
    x = _clip(5)
    with torch.no_grad():
        ref = model(x)
        model.frame_chunk_size = 3
        torch.testing.assert_close(model(x), ref)
    model.frame_chunk_size, model.eval_chunk_size = None, 4
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref)  # 10 frames in chunks of 4 under no_grad


def test_tubelet_clips_equal_the_tubelet_convolution_on_the_whole_video():
    model = _tiny("vivit_base_fe_16x2_224")
    x = _clip(5)  # the trailing fifth frame is dropped, as a stride-2 convolution drops it
    frames, B, T = model._fold(x)
    assert frames.shape == (2 * 2, 3, 2, 32, 32) and T == 2
    with torch.no_grad():
        ours = model.patch_embed(frames).reshape(2, 2, 4, 4, 32)  # (B, T', H', W', D)
        w = model.patch_embed.proj
        ref = F.conv3d(x, w.weight, w.bias, stride=(2, 8, 8)).permute(0, 2, 3, 4, 1)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shorter than one tubelet"):
        model(_clip(1))


def test_temporal_blocks_checkpointing_is_equivalent():
    torch.manual_seed(0)
    blocks = TemporalBlocks(*[nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(3)])
    x = torch.randn(2, 5, 8, requires_grad=True)
    ref = blocks(x)
    (g,) = torch.autograd.grad(ref.sum(), x)
    blocks.set_grad_checkpointing(True)
    out = blocks(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], g)
    assert list(blocks.state_dict())[0] == "0.0.weight"


def test_ill_args():
    with pytest.raises(ValueError, match="num_frames"):
        _custom(num_frames=0)
    with pytest.raises(ValueError, match="did you mean token"):
        _custom(global_pool="tokens")
    model = _custom()
    with pytest.raises(ValueError, match=r"expected video \(B, C, T, H, W\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(_clip(), output_fmt="NCHW")


# ----------------------------------------------------------------------------- the three models' contract
@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_contract(name: str):
    model = _tiny(name)
    x = torch.randn(2, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(1))
    T = x.shape[2] // (model.tubelet_size or 1)
    depth = len(model.blocks)  # indices count the spatial blocks
    with torch.no_grad():
        every = model.forward_intermediates(x, indices=None, intermediates_only=True)
        assert len(every) == depth == 2
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
        pair = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        assert len(pair) == 2 and all(torch.equal(p, e) for p, e in zip(pair, every))
        assert [tuple(m.shape) for m in every] == [(2, 32, T, 4, 4)] * 2
        last = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
        assert len(last) == 1 and last[0].shape == (2, T * 16, 32)
        torch.testing.assert_close(last[0], every[-1].flatten(2).transpose(1, 2))  # (t, h, w) token order
        (fmap, cls), = model.forward_intermediates(x, indices=1, norm=True, return_prefix_tokens=True, intermediates_only=True)
        torch.testing.assert_close(cls, model.norm(model.forward_intermediates(x, indices=1, return_prefix_tokens=True, intermediates_only=True)
                                                   [0][1]))
        assert cls.shape == (2, T, 32)
        torch.testing.assert_close(cls, model.forward_spatial(x))  # normed per-frame class tokens feed time
        final, inter = model.forward_intermediates(x, indices=1, intermediates_only=False)
        torch.testing.assert_close(model.forward_head(final), model(x))
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == 1
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[depth])


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_reaches_both_encoders(name: str):
    model = _tiny(name)
    model.set_grad_checkpointing(True)
    assert model.spatial_encoder.grad_checkpointing
    temporal = model.get_temporal_encoder()
    assert getattr(temporal, "grad_checkpointing", True)  # STAM's nn.TransformerEncoder has no switch

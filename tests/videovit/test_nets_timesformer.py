"""TimeSformer: shapes, HF / official-checkpoint parity, and initialisation from a timm ImageNet ViT."""

from __future__ import annotations

import pytest
import torch

import videovit
from videovit.convert.hf_timesformer import convert_hf_timesformer
from engine.errors import UserError
from vtk_testing import randomize_

NAME = "timesformer_base_patch16_224"
TINY = dict(img_size=32, patch_size=8, num_frames=4, embed_dim=32, depth=2, num_heads=2, num_classes=5, mlp_ratio=2.0)


def _hf(attention_type: str = "divided_space_time"):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.TimesformerConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                         num_labels=5, attention_type=attention_type)
    torch.manual_seed(0)
    hf = transformers.TimesformerForVideoClassification(cfg).eval()
    return randomize_(hf, 0.2)  # non-trivial values everywhere (HF zero-inits some tables and biases)


def _clip() -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))  # (B, C, T, H, W)


def _hf_logits(hf, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(pixel_values=x.transpose(1, 2)).logits  # HF takes (B, T, C, H, W)


def _ours(pretrained, **kw) -> torch.nn.Module:
    return videovit.create_model(NAME, pretrained=pretrained, **{**TINY, **kw}).eval()


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_hf_parity(attention_type: str) -> None:
    hf = _hf(attention_type)
    x = _clip()
    ref = _hf_logits(hf, x)
    with torch.no_grad():
        out = _ours(hf.state_dict(), attention_type=attention_type)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_hf_parity_detects_a_misplaced_weight() -> None:
    hf = _hf()
    x = _clip()
    sd = convert_hf_timesformer(hf.state_dict(), None)
    a, b = "blocks.1.attn.qkv.weight", "blocks.1.temporal_attn.qkv.weight"
    sd[a], sd[b] = sd[b], sd[a]
    with torch.no_grad():
        out = _ours(sd)(x)
    assert (out - _hf_logits(hf, x)).abs().max() > 1e-3


# Official names, read from facebookresearch/TimeSformer timesformer/models/vit.py (VisionTransformer / Block),
# written independently of videovit.convert.hf_timesformer.
_OFFICIAL_LAYER = {
    "layernorm_before": "norm1", "attention.attention.qkv": "attn.qkv", "attention.output.dense": "attn.proj",
    "temporal_layernorm": "temporal_norm1", "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj", "temporal_dense": "temporal_fc",
    "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}
_OFFICIAL_TOP = {
    "timesformer.embeddings.cls_token": "cls_token", "timesformer.embeddings.position_embeddings": "pos_embed",
    "timesformer.embeddings.time_embeddings": "time_embed",
    "timesformer.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "timesformer.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "timesformer.layernorm.weight": "norm.weight", "timesformer.layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight", "classifier.bias": "head.bias",
}


def _official_checkpoint(hf_sd: dict) -> dict:
    """An official ``.pyth``-style training checkpoint: ``{'model_state': {'model.<name>': ...}, ...}``."""
    out = {}
    for k, v in hf_sd.items():
        if k in _OFFICIAL_TOP:
            out["model." + _OFFICIAL_TOP[k]] = v
            continue
        i, rest = k[len("timesformer.encoder.layer."):].split(".", 1)
        mod, param = rest.rsplit(".", 1)
        out[f"model.blocks.{i}.{_OFFICIAL_LAYER[mod]}.{param}"] = v
    return {"epoch": 15, "model_state": out, "optimizer_state": {}, "cfg": "TIMESFORMER:\n  ATTENTION_TYPE: ..."}


def test_official_checkpoint_parity(tmp_path) -> None:
    hf = _hf()
    x = _clip()
    path = tmp_path / "TimeSformer_divST_tiny.pth"
    ckpt = _official_checkpoint(hf.state_dict())
    assert len(ckpt["model_state"]) == len(hf.state_dict())
    torch.save(ckpt, path)
    with torch.no_grad():
        out = _ours(str(path))(x)
    torch.testing.assert_close(out, _hf_logits(hf, x), rtol=1e-4, atol=1e-4)
    # one weight in the wrong place must show
    ms = ckpt["model_state"]
    ms["model.blocks.0.mlp.fc1.bias"] = ms["model.blocks.0.mlp.fc1.bias"].flip(0)
    with torch.no_grad():
        bad = _ours(ckpt)(x)
    assert (bad - _hf_logits(hf, x)).abs().max() > 1e-3


def _timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                           num_heads=2, mlp_ratio=2.0, num_classes=7).eval()
    return randomize_(vit, 0.2)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only"])
def test_timm_vit_init_on_static_clip(attention_type: str) -> None:
    """A clip of T identical frames through the ImageNet-initialised TimeSformer = the ViT on one frame."""
    vit = _timm_vit()
    model = _ours(vit.state_dict(), attention_type=attention_type, num_classes=7)
    frame = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    clip = frame[:, :, None].expand(-1, -1, 4, -1, -1)  # (B, C, T, H, W)
    with torch.no_grad():
        ref = vit.forward_features(frame)[:, 0]
        out = model.forward_head(model.forward_features(clip), pre_logits=True)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(clip), vit(frame), rtol=1e-4, atol=1e-4)
        moving = clip + torch.randn_like(clip)  # a moving clip differs: the check is not vacuous
        assert (model.forward_head(model.forward_features(moving), pre_logits=True) - ref).abs().max() > 1e-3
    if attention_type == "divided_space_time":
        sd = model.state_dict()
        assert torch.equal(sd["blocks.1.temporal_attn.qkv.weight"], vit.state_dict()["blocks.1.attn.qkv.weight"])
        assert torch.equal(sd["blocks.0.temporal_norm1.weight"], vit.state_dict()["blocks.0.norm1.weight"])
        assert sd["blocks.0.temporal_fc.weight"].abs().sum() == 0 and sd["time_embed"].abs().sum() == 0


def test_space_only_averages_frame_class_tokens() -> None:
    """Official space-only head on a moving clip: ``norm(mean_t cls_t)`` of the ViT run on every frame."""
    vit = _timm_vit()
    model = _ours(vit.state_dict(), attention_type="space_only", num_classes=7)
    clip = _clip()
    frames = clip.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
    with torch.no_grad():
        cls = vit.blocks(vit._pos_embed(vit.patch_embed(frames)))[:, 0].reshape(2, 4, -1)  # (B, T, D) pre-norm
        ref = vit.norm(cls.mean(dim=1))
        out = model.forward_head(model.forward_features(clip), pre_logits=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_timm_vit_init_resamples_grid_and_head() -> None:
    vit = _timm_vit()
    model = videovit.create_model(NAME, pretrained=vit.state_dict(), **{**TINY, "img_size": 48, "num_classes": 3})
    assert model.pos_embed.shape == (1, 1 + 36, 32)
    assert model(torch.randn(1, 3, 4, 48, 48)).shape == (1, 3)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_shapes_intermediates_and_checkpointing(attention_type: str) -> None:
    torch.manual_seed(0)
    model = videovit.create_model(NAME, **{**videovit.registry.tiny_overrides(NAME), "attention_type": attention_type})
    model.eval()
    x = torch.randn(2, 3, 4, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    maps = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert [m.shape for m in maps] == [(2, 32, 4, 4, 4)] * 2
    final, [(toks, prefix)] = model.forward_intermediates(x, indices=1, output_fmt="NLC", return_prefix_tokens=True)
    assert toks.shape == (2, 4 * 16, 32) and prefix.shape == (2, 1, 32)  # 1 + 4 * 16 tokens in all
    torch.testing.assert_close(model.forward_head(final), out)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), out)
    # another clip length and resolution resample the tables on the fly
    assert model(torch.randn(1, 3, 6, 40, 40)).shape == (1, 10)


def test_checkpoint_roundtrip_and_errors(tmp_path) -> None:
    model = videovit.create_model(NAME, **videovit.registry.tiny_overrides(NAME)).eval()
    again = videovit.create_model(NAME, pretrained=model.state_dict(), **videovit.registry.tiny_overrides(NAME))
    x = torch.randn(1, 3, 4, 32, 32)
    torch.testing.assert_close(again.eval()(x), model(x))
    with pytest.raises(ValueError, match="attention_type: 'spaceonly' is not one of .*did you mean space_only"):
        videovit.create_model(NAME, attention_type="spaceonly")
    with pytest.raises(UserError, match="no such checkpoint"):
        videovit.create_model(NAME, pretrained=str(tmp_path / "missing.pyth"), **videovit.registry.tiny_overrides(NAME))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        model(torch.randn(1, 3, 32, 32))


def test_scratch_timesformer_sees_frame_order():
    """From scratch, time_embed is random, so a reversed clip must give other logits (a zero time_embed makes
    divided space-time attention exactly invariant to frame order, and motion direction unlearnable)."""
    import videovit

    torch.manual_seed(0)
    model = videovit.create_model("timesformer_base_patch16_224", img_size=32, patch_size=8, num_frames=4,
                                  embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    pooled = lambda v: model.forward_head(model.forward_features(v), pre_logits=True)  # noqa: E731
    with torch.no_grad():
        token_std = float(model.patch_embed(x[:, :, 0]).std())
        # frame order as visible as content: at timm's 0.02 it is ~3% of a token and training stalls (docs/videovit.md)
        assert 0.5 < float(model.time_embed.std()) / token_std < 4.0
        gap = (pooled(x) - pooled(x.flip(2))).abs().max()
        model.time_embed.zero_()  # the official init: exactly order-invariant
        gap_zero = (pooled(x) - pooled(x.flip(2))).abs().max()
    assert gap_zero < 1e-5
    assert gap > 100 * gap_zero and gap > 1e-4


def test_scratch_init_follows_the_width():
    """jax (default): Xavier linear layers, whose std follows the width; timm: a fixed 0.02 (docs/videovit.md)."""
    import videovit

    kw = dict(img_size=32, patch_size=8, num_frames=4, embed_dim=64, depth=2, num_heads=4, num_classes=3)
    torch.manual_seed(0)
    jax = videovit.create_model("timesformer_base_patch16_224", **kw)
    timm_init = videovit.create_model("timesformer_base_patch16_224", weight_init="timm", **kw)
    xavier_std = (2.0 / (64 + 3 * 64)) ** 0.5  # qkv: fan_in 64, fan_out 192
    for blk_j, blk_t in zip(jax.requires_grad_(False).blocks, timm_init.requires_grad_(False).blocks):
        assert abs(float(blk_j.attn.qkv.weight.std()) / xavier_std - 1) < 0.1
        assert abs(float(blk_t.attn.qkv.weight.std()) - 0.02) < 0.002  # trunc-normal(0.02)
        assert float(blk_j.temporal_fc.weight.abs().max()) == 0.0  # still zero, as in the official code
    with pytest.raises(ValueError, match="weight_init"):
        videovit.create_model("timesformer_base_patch16_224", weight_init="xavier", **kw)
    official = videovit.create_model("timesformer_base_patch16_224", time_init_std=0.0, **kw)
    assert float(official.time_embed.detach().abs().max()) == 0.0  # the official zero time_embed on request
    with pytest.raises(ValueError, match="time_init_std"):
        videovit.create_model("timesformer_base_patch16_224", time_init_std=-1.0, **kw)

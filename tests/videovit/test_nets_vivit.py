"""ViViT models 1-4: shapes, HF parity (both HF key layouts), and initialisation from a timm image ViT."""

from __future__ import annotations

import re

import pytest
import torch

import videovit
from videovit.convert.hf_vivit import convert_hf_vivit
from vtk_testing import randomize_

TINY = dict(img_size=32, patch_size=8, tubelet_size=2, num_frames=4, embed_dim=32, depth=2, num_heads=2,
            num_classes=5, mlp_ratio=2.0)
MODELS = ["vivit_base_16x2_224", "vivit_base_fe_16x2_224", "vivit_base_fsa_16x2_224", "vivit_base_fdp_16x2_224"]


def _hf():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5)
    torch.manual_seed(0)
    hf = transformers.VivitForVideoClassification(cfg).eval()
    return randomize_(hf, 0.2)  # HF zero-inits cls/pos tables: give every tensor non-trivial values


def _clip(t: int = 4) -> torch.Tensor:
    return torch.randn(2, 3, t, 32, 32, generator=torch.Generator().manual_seed(1))  # (B, C, T, H, W)


def _hf_logits(hf, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(pixel_values=x.transpose(1, 2)).logits  # HF takes (B, T, C, H, W)


def _legacy_layout(sd: dict) -> dict:
    """transformers < 5 hub layout (``encoder.layer.i.attention.attention.query`` ...), as the hub files store."""
    table = [(r"vivit\.layers\.(\d+)\.attention\.q_proj", r"vivit.encoder.layer.\1.attention.attention.query"),
             (r"vivit\.layers\.(\d+)\.attention\.k_proj", r"vivit.encoder.layer.\1.attention.attention.key"),
             (r"vivit\.layers\.(\d+)\.attention\.v_proj", r"vivit.encoder.layer.\1.attention.attention.value"),
             (r"vivit\.layers\.(\d+)\.attention\.o_proj", r"vivit.encoder.layer.\1.attention.output.dense"),
             (r"vivit\.layers\.(\d+)\.mlp\.fc1", r"vivit.encoder.layer.\1.intermediate.dense"),
             (r"vivit\.layers\.(\d+)\.mlp\.fc2", r"vivit.encoder.layer.\1.output.dense"),
             (r"vivit\.layers\.(\d+)\.", r"vivit.encoder.layer.\1.")]
    out = {}
    for k, v in sd.items():
        for pat, rep in table:
            k2 = re.sub(pat, rep, k)
            if k2 != k:
                k = k2
                break
        out[k] = v
    return out


@pytest.mark.parametrize("layout", ["v5", "legacy"])
def test_hf_parity(layout: str) -> None:
    hf = _hf()
    x = _clip()
    sd = hf.state_dict() if layout == "v5" else _legacy_layout(hf.state_dict())
    with torch.no_grad():
        out = videovit.create_model("vivit_base_16x2_224", pretrained=sd, **TINY).eval()(x)
    torch.testing.assert_close(out, _hf_logits(hf, x), rtol=1e-4, atol=1e-4)


def test_hf_parity_detects_a_misplaced_weight() -> None:
    hf = _hf()
    x = _clip()
    sd = convert_hf_vivit(hf.state_dict(), None)
    w = sd["blocks.1.attn.qkv.weight"]
    sd["blocks.1.attn.qkv.weight"] = torch.cat([w[32:64], w[:32], w[64:]])  # q and k swapped
    with torch.no_grad():
        out = videovit.create_model("vivit_base_16x2_224", pretrained=sd, **TINY).eval()(x)
    assert (out - _hf_logits(hf, x)).abs().max() > 1e-3


def _timm_vit(class_token: bool = True):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kw = {} if class_token else dict(class_token=False, global_pool="avg", fc_norm=False)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                           num_heads=2, mlp_ratio=2.0, num_classes=7, **kw).eval()
    return randomize_(vit, 0.2)


def _tanh_gelu_vit(vit):
    """The same ViT with scenic's (tanh-approximate) GELU, which ViViT uses."""
    for blk in vit.blocks:
        blk.mlp.act = torch.nn.GELU(approximate="tanh")
    return vit


def test_central_frame_init_from_timm_vit() -> None:
    """One tubelet (T = t = 2): the model sees only the central frame and reproduces the image ViT on it."""
    vit = _tanh_gelu_vit(_timm_vit())
    model = videovit.create_model("vivit_base_16x2_224", pretrained=vit.state_dict(),
                                  **{**TINY, "num_frames": 2, "num_classes": 7}).eval()
    frame = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    other = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    clip = torch.stack([other, frame], dim=2)  # central frame of the tubelet is index t // 2 = 1
    with torch.no_grad():
        torch.testing.assert_close(model(clip), vit(frame), rtol=1e-4, atol=1e-4)
        assert (model(torch.stack([frame, other], dim=2)) - vit(frame)).abs().max() > 1e-3
    avg = videovit.create_model("vivit_base_16x2_224", pretrained=vit.state_dict(),
                                **{**TINY, "num_frames": 2, "num_classes": 7, "tubelet_init": "average"}).eval()
    with torch.no_grad():  # filter inflation: a static clip gives the image result
        torch.testing.assert_close(avg(torch.stack([frame, frame], dim=2)), vit(frame), rtol=1e-4, atol=1e-4)


def test_factorised_encoder_init_from_timm_vit() -> None:
    vit = _tanh_gelu_vit(_timm_vit())
    model = videovit.create_model("vivit_base_fe_16x2_224", pretrained=vit.state_dict(),
                                  **{**TINY, "temporal_depth": 1}).eval()
    frames = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, cls = model.forward_intermediates(frames, indices=1, norm=True, return_prefix_tokens=True, intermediates_only=True)[0]  # (B, T', D)
        for t in range(2):  # temporal index t sees the central frame 2t + 1 of its tubelet
            ref = vit.forward_features(frames[:, :, 2 * t + 1])[:, 0]
            torch.testing.assert_close(cls[:, t], ref, rtol=1e-4, atol=1e-4)
        assert (cls[:, 0] - cls[:, 1]).abs().max() > 1e-3
    assert model(frames).shape == (2, 5)


def test_fsa_and_fdp_init_from_timm_vit() -> None:
    vit = _timm_vit(class_token=False)
    vsd = vit.state_dict()
    fsa = videovit.create_model("vivit_base_fsa_16x2_224", pretrained=vsd, **TINY)
    sd = fsa.state_dict()
    assert torch.equal(sd["blocks.1.temporal_attn.proj.weight"], vsd["blocks.1.attn.proj.weight"])
    assert torch.equal(sd["blocks.1.attn.qkv.weight"], vsd["blocks.1.attn.qkv.weight"])
    assert torch.equal(sd["blocks.0.temporal_norm1.weight"], torch.ones(32))  # scenic keeps the temporal LN at init
    grid = vsd["pos_embed"][0]  # (N, D), tiled over the T' = 2 temporal indices
    torch.testing.assert_close(sd["pos_embed"][0], torch.cat([grid, grid]))
    fdp = videovit.create_model("vivit_base_fdp_16x2_224", pretrained=_timm_vit().state_dict(), **TINY)
    assert fdp.cls_token is None and fdp.pos_embed.shape == (1, 2 * 16, 32)
    assert fdp(_clip()).shape == (2, 5)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_intermediates_and_checkpointing(name: str) -> None:
    torch.manual_seed(0)
    model = videovit.create_model(name, **videovit.registry.tiny_overrides(name)).eval()
    x = _clip()
    out = model(x)
    assert out.shape == (2, 10)
    maps = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert [m.shape for m in maps] == [(2, 32, 2, 4, 4)] * 2
    final, _ = model.forward_intermediates(x, indices=1, intermediates_only=False)
    torch.testing.assert_close(model.forward_head(final), out)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), out)
    assert model(_clip(6)).shape == (2, 10)  # 3 temporal indices: tables resampled on the fly
    again = videovit.create_model(name, pretrained=model.state_dict(), **videovit.registry.tiny_overrides(name))
    torch.testing.assert_close(again.eval()(x), out)


def test_ill_args() -> None:
    with pytest.raises(ValueError, match="divisible by tubelet_size"):
        videovit.create_model("vivit_base_16x2_224", num_frames=5)
    with pytest.raises(ValueError, match="no class token"):
        videovit.create_model("vivit_base_fsa_16x2_224", global_pool="token", **TINY)
    with pytest.raises(ValueError, match="even num_heads"):
        videovit.create_model("vivit_base_fdp_16x2_224", **{**TINY, "num_heads": 1})
    with pytest.raises(ValueError, match="tubelet_init: 'centre' is not one of .*did you mean central"):
        videovit.create_model("vivit_base_16x2_224", tubelet_init="centre", **TINY)

"""Parity of vtk's ViT / R50+ViT with timm, MONAI, HF transformers and Google ``.npz`` files.

Every reference model is built from a small, non-default config with random weights (nothing is downloaded);
its weights go through ``create_model(..., pretrained=...)`` and the outputs must agree to 1e-4 (fp32, eval).
``_assert_every_weight_matters`` then checks that every one of our parameters moves the output (first order), so a
single wrongly mapped tensor could not go unnoticed by the parity check.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import torch
from torch import nn

from backbones import create_model
from vtk_testing import perturb_

timm = pytest.importorskip("timm")

ATOL = 1e-4  # the contract's tolerance; formats that map exactly are checked at EXACT
EXACT = 1e-5
_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3, num_classes=5)


def _randomise(model: nn.Module, scale: float = 0.05) -> nn.Module:
    """Move every parameter off its init (norm affines included) so a swapped tensor changes the output."""
    return perturb_(model, scale, seed=3)


def _assert_every_weight_matters(model: nn.Module, fn: Callable[[nn.Module], torch.Tensor], atol: float) -> None:
    """Every trainable tensor moves the output: a 0.05 change of its entries shifts a random projection of the
    output by more than ``10 * atol`` to first order, so a wrongly mapped tensor fails the parity check."""
    model.zero_grad(set_to_none=True)
    out = fn(model)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * r).sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} does not take part in the output"
            effect = 0.05 * p.grad.abs().sum().item() / r.abs().mean().item()
            assert effect > 10 * atol, f"{name} barely changes the output (first-order effect {effect:.2e})"
    model.zero_grad(set_to_none=True)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------------------- timm
def _timm_hybrid(layers=(1, 1), in_chans: int = 3, img_size: int = 32) -> nn.Module:
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import _resnetv2
    bb = _resnetv2(layers, in_chans=in_chans)
    return VisionTransformer(img_size=img_size, patch_size=1, in_chans=in_chans, embed_dim=64, depth=2, num_heads=4,
                             num_classes=5, embed_layer=partial(HybridEmbed, backbone=bb))


def test_timm_vit_parity() -> None:
    torch.manual_seed(0)
    ref = _randomise(timm.create_model("vit_small_patch16_224", **_VIT, mlp_ratio=2.0))
    ours = create_model("vit_small_patch16_224", pretrained=ref.state_dict(), **_VIT, mlp_ratio=2.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(ours(x), ref(x), EXACT)
    _assert_every_weight_matters(ours, lambda m: m(x), EXACT)


def test_timm_vit_file_in_chans1_resized(tmp_path: Path) -> None:
    """timm's own file loader (adapt_input_conv + pos-embed resampling) vs ours: 3-channel weights at 32 px into
    a 1-channel model at 48 px."""
    torch.manual_seed(0)
    src = _randomise(timm.create_model("vit_small_patch16_224", **_VIT))
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    kw = dict(_VIT, img_size=48, in_chans=1)
    ref = timm.create_model("vit_small_patch16_224", pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=5), **kw).eval()
    ours = create_model("vit_small_patch16_224", pretrained=path, **kw).eval()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        _close(ours(x), ref(x), EXACT)
    torch.testing.assert_close(ours.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))


def test_timm_hybrid_parity() -> None:
    torch.manual_seed(0)
    ref = _randomise(_timm_hybrid())
    ours = create_model("vit_base_r50_s16_224", pretrained=ref.state_dict(), layers=(1, 1), img_size=32,
                        embed_dim=64, depth=2, num_heads=4, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(ours(x), ref(x), EXACT)
    _assert_every_weight_matters(ours, lambda m: m(x), EXACT)


# ------------------------------------------------------------------------------------------------- Google npz
def _hwio(w: torch.Tensor) -> np.ndarray:
    return w.permute(2, 3, 1, 0).numpy()  # OIHW -> HWIO


def _to_google(model: nn.Module) -> Dict[str, np.ndarray]:
    """Write a timm ViT / hybrid in Google's Flax layout (the inverse of timm's ``_load_weights``)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    C, H = model.embed_dim, model.blocks[0].attn.num_heads
    w = {"embedding/kernel": _hwio(sd["patch_embed.proj.weight"]), "embedding/bias": sd["patch_embed.proj.bias"],
         "cls": sd["cls_token"], "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].t(), "head/bias": sd["head.bias"],
         "pre_logits/kernel": torch.randn(C, C), "pre_logits/bias": torch.zeros(C)}
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        for j, n in enumerate(("query", "key", "value")):
            w[f"{p}MultiHeadDotProductAttention_1/{n}/kernel"] = sd[b + "attn.qkv.weight"][j * C:(j + 1) * C].t() \
                .reshape(C, H, C // H)
            w[f"{p}MultiHeadDotProductAttention_1/{n}/bias"] = sd[b + "attn.qkv.bias"][j * C:(j + 1) * C] \
                .reshape(H, C // H)
        w[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].t().reshape(H, C // H, C)
        w[f"{p}MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for src, dst in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            w[f"{p}{dst}/scale"], w[f"{p}{dst}/bias"] = sd[f"{b}{src}.weight"], sd[f"{b}{src}.bias"]
        for r in range(2):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{b}mlp.fc{r + 1}.weight"].t()
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = sd[f"{b}mlp.fc{r + 1}.bias"]
    w.update(_to_google_resnet(sd))
    return {k: (v if isinstance(v, np.ndarray) else v.numpy()).astype(np.float32) for k, v in w.items()}


def _to_google_resnet(sd: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    bb = "patch_embed.backbone."
    if bb + "stem.conv.weight" not in sd:
        return {}
    w = {"conv_root/kernel": _hwio(sd[bb + "stem.conv.weight"]),
         "gn_root/scale": sd[bb + "stem.norm.weight"], "gn_root/bias": sd[bb + "stem.norm.bias"]}
    pat = re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(conv\d|norm\d|downsample\.conv|"
                     r"downsample\.norm)\.(weight|bias)$")
    for k, v in sd.items():
        m = pat.match(k)
        if not m:
            continue
        s, u, mod, leaf = m.groups()
        name = {"downsample.conv": "conv_proj", "downsample.norm": "gn_proj"}.get(mod, mod.replace("norm", "gn"))
        kind = "kernel" if mod.endswith(("conv", "1", "2", "3")) and "conv" in mod else \
            ("scale" if leaf == "weight" else "bias")
        w[f"block{int(s) + 1}/unit{int(u) + 1}/{name}/{kind}"] = _hwio(v) if kind == "kernel" else v
    return w


@pytest.mark.parametrize("hybrid", [False, True], ids=["ViT-B_16-style", "R50+ViT-B_16-style"])
def test_google_npz_parity(tmp_path: Path, hybrid: bool) -> None:
    """timm's npz loader (``_load_weights``) and ours read the same Google-layout file, 1-channel input."""
    from timm.models.vision_transformer import _load_weights
    torch.manual_seed(0)
    src = _randomise(_timm_hybrid() if hybrid else timm.create_model("vit_small_patch16_224", **_VIT))
    path = tmp_path / ("R50+ViT.npz" if hybrid else "ViT.npz")
    np.savez(path, **_to_google(src))
    ref = _timm_hybrid(in_chans=1) if hybrid else timm.create_model("vit_small_patch16_224", **_VIT, in_chans=1)
    _load_weights(ref, str(path))
    kw = dict(layers=(1, 1), img_size=32, embed_dim=64, depth=2, num_heads=4, num_classes=5) if hybrid else _VIT
    ours = create_model("vit_base_r50_s16_224" if hybrid else "vit_small_patch16_224", pretrained=path,
                        in_chans=1, **kw).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        _close(ours(x), ref.eval()(x), EXACT)
    _assert_every_weight_matters(ours, lambda m: m(x), EXACT)


# ------------------------------------------------------------------------------------------------------ MONAI
@pytest.mark.parametrize("proj_type", ["perceptron", "conv"])
def test_monai_vit_parity(proj_type: str) -> None:
    """MONAI 3D ViT at a non-cubic size: final tokens and every hidden state; MONAI eps 1e-5 and no qkv bias."""
    from monai.networks.nets import ViT
    torch.manual_seed(0)
    size = (16, 32, 24)
    ref = _randomise(ViT(in_channels=2, img_size=size, patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2,
                         num_heads=3, proj_type=proj_type))
    ours = create_model("vit3d_base_patch16_96", pretrained=ref.state_dict(), in_chans=2, img_size=size,
                        patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, qkv_bias=False,
                        norm_eps=1e-5).eval()
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        y, hidden = ref(x)
        final, inter = ours.forward_intermediates(x, output_fmt="NLC")
    _close(final, y)
    for a, b in zip(inter, hidden):
        _close(a, b)
    _assert_every_weight_matters(ours, lambda m: m.forward_features(x), ATOL)


def test_monai_unetr_vit_part() -> None:
    """The ``vit.*`` tensors of a MONAI UNETR state dict initialise our 3D ViT; decoder keys are ignored."""
    from monai.networks.nets import UNETR
    torch.manual_seed(0)
    ref = _randomise(UNETR(in_channels=1, out_channels=3, img_size=(32, 32, 32), feature_size=8, hidden_size=48,
                           mlp_dim=96, num_heads=3))
    ours = create_model("vit3d_base_patch16_96", pretrained=ref.state_dict(), img_size=32, embed_dim=48,
                        mlp_ratio=2.0, num_heads=3, qkv_bias=False, norm_eps=1e-5).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        y, hidden = ref.vit(x)
        inter = ours.forward_intermediates(x, indices=[3, 6, 9], output_fmt="NLC", intermediates_only=True)
    _close(ours.forward_features(x), y)
    for a, i in zip(inter, (3, 6, 9)):
        _close(a, hidden[i])


# --------------------------------------------------------------------------------------------------------- HF
def test_hf_vit_parity() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                 image_size=32, patch_size=8, num_labels=5, num_channels=3)
    ref = _randomise(transformers.ViTForImageClassification(cfg))
    ours = create_model("vit_small_patch16_224", pretrained=ref.state_dict(), **dict(_VIT, mlp_ratio=2.0),
                        norm_eps=1e-12).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(ours(x), ref(pixel_values=x).logits, EXACT)
    _assert_every_weight_matters(ours, lambda m: m(x), EXACT)


def test_hf_hub_layout_keys() -> None:
    """Hub files use the transformers 4 names (``encoder.layer.{i}.attention.attention.query``); both map alike."""
    transformers = pytest.importorskip("transformers")
    from backbones.convert.hf_vit import convert_hf_vit
    cfg = transformers.ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, intermediate_size=96,
                                 image_size=32, patch_size=8)
    sd = transformers.ViTModel(cfg).state_dict()
    old = {}
    for k, v in sd.items():
        k = re.sub(r"^layers\.(\d+)\.attention\.(q|k|v)_proj", lambda m: f"encoder.layer.{m.group(1)}.attention."
                   f"attention.{dict(q='query', k='key', v='value')[m.group(2)]}", k)
        k = re.sub(r"^layers\.(\d+)\.attention\.o_proj", r"encoder.layer.\1.attention.output.dense", k)
        k = re.sub(r"^layers\.(\d+)\.mlp\.fc1", r"encoder.layer.\1.intermediate.dense", k)
        k = re.sub(r"^layers\.(\d+)\.mlp\.fc2", r"encoder.layer.\1.output.dense", k)
        k = re.sub(r"^layers\.(\d+)\.", r"encoder.layer.\1.", k)
        old["vit." + k] = v
    new, legacy = convert_hf_vit(sd, None), convert_hf_vit(old, None)
    assert new.keys() == legacy.keys()
    assert all(torch.equal(new[k], legacy[k]) for k in new)

"""TransUNet (Chen et al., arXiv:2102.04306): shapes, size, R50+ViT weights from timm and from a Google npz."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from torch import nn

import medvit
from medvit.nets.transunet import TransUNet
from vtk_testing import perturb_

__all__: List[str] = []

timm = pytest.importorskip("timm")

ENC = dict(img_size=32, embed_dim=32, depth=2, num_heads=2)  # R50 units (1, 1, 1): still stride 16
TINY = dict(ENC, layers=(1, 1, 1), decoder_channels=(16, 8, 8, 4), head_channels=16, num_classes=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def _timm_hybrid() -> nn.Module:
    """timm R50+ViT without a class token (TransUNet drops it), every parameter moved off its init."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import _resnetv2
    torch.manual_seed(0)
    net = VisionTransformer(patch_size=1, num_classes=0, class_token=False, global_pool="avg", fc_norm=False,
                            embed_layer=partial(HybridEmbed, backbone=_resnetv2((1, 1, 1))), **ENC)
    return perturb_(net)


@pytest.fixture(scope="module")
def hybrid() -> nn.Module:
    return _timm_hybrid()


def _tokens(net: TransUNet, x: torch.Tensor) -> torch.Tensor:
    """The normalised token map TransUNet decodes, as tokens ``(B, N, C)``."""
    last, = net.encoder.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    return last.flatten(2).transpose(1, 2)


def test_shapes_grayscale_and_skips() -> None:
    torch.manual_seed(0)
    net = medvit.create_model("transunet", **TINY)
    assert net.spatial_dims == 2 and [b.conv1[0].in_channels for b in net.decoder.blocks] == [16 + 512, 16 + 256,
                                                                                             8 + 64, 8]
    x = torch.randn(2, 1, 32, 32)
    out = net(x)
    assert out.shape == (2, 3, 32, 32)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():  # grayscale is repeated to RGB, as in the official code
        torch.testing.assert_close(net(x), net.forward_head(net.decoder(
            *_split(net.encoder.forward_intermediates_with_skips(x.repeat(1, 3, 1, 1), indices=1, norm=True)))))


def _split(out: Tuple[List[torch.Tensor], torch.Tensor, List[torch.Tensor]]):
    cnn, _, (tokens,) = out  # skips at strides 2, 4, 8; the normalised last-block map
    return tokens, cnn[::-1]


def test_paper_config_param_count() -> None:
    """R50+ViT-B/16 at 224, CUP (256, 128, 64, 16), 3 skips, 9 classes: about 105.3M."""
    try:
        with torch.device("meta"):
            net = medvit.create_model("transunet")
    except RuntimeError:  # a layer that is not meta-constructible yet: build on CPU
        net = medvit.create_model("transunet")
    n = sum(p.numel() for p in net.parameters())
    assert 105.0e6 < n < 105.6e6, n
    assert net.in_chans == 1 and net.num_classes == 9 and net.decoder.n_skip == 3


def test_timm_hybrid_weights(hybrid: nn.Module) -> None:
    net = medvit.create_model("transunet", pretrained=hybrid.state_dict(), **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_tokens(net, x), hybrid.forward_features(x), rtol=0, atol=1e-4)


def _hwio(w: torch.Tensor) -> torch.Tensor:
    return w.permute(2, 3, 1, 0)  # OIHW -> HWIO


def _google_blocks(sd: Dict[str, torch.Tensor], depth: int, C: int, H: int) -> Dict[str, torch.Tensor]:
    w = {}
    for i in range(depth):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        a = p + "MultiHeadDotProductAttention_1/"
        for j, n in enumerate(("query", "key", "value")):
            w[f"{a}{n}/kernel"] = sd[b + "attn.qkv.weight"][j * C:(j + 1) * C].t().reshape(C, H, C // H)
            w[f"{a}{n}/bias"] = sd[b + "attn.qkv.bias"][j * C:(j + 1) * C].reshape(H, C // H)
        w[a + "out/kernel"] = sd[b + "attn.proj.weight"].t().reshape(H, C // H, C)
        w[a + "out/bias"] = sd[b + "attn.proj.bias"]
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            w[f"{p}{theirs}/scale"], w[f"{p}{theirs}/bias"] = sd[f"{b}{ours}.weight"], sd[f"{b}{ours}.bias"]
        for r in range(2):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{b}mlp.fc{r + 1}.weight"].t()
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = sd[f"{b}mlp.fc{r + 1}.bias"]
    return w


def _google_resnet(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    bb = "patch_embed.backbone."
    w = {"conv_root/kernel": _hwio(sd[bb + "stem.conv.weight"]), "gn_root/scale": sd[bb + "stem.norm.weight"],
         "gn_root/bias": sd[bb + "stem.norm.bias"]}
    pat = re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(conv\d|norm\d|downsample\.conv|"
                     r"downsample\.norm)\.(weight|bias)$")
    for k, v in sd.items():
        m = pat.match(k)
        if m:
            s, u, mod, leaf = m.groups()
            unit = f"block{int(s) + 1}/unit{int(u) + 1}/"
            if "conv" in mod:
                w[unit + ("conv_proj" if mod.startswith("down") else mod) + "/kernel"] = _hwio(v)
            else:
                name = "gn_proj" if mod.startswith("down") else mod.replace("norm", "gn")
                w[unit + name + ("/scale" if leaf == "weight" else "/bias")] = v
    return w


def _write_r50_vit_npz(model: nn.Module, path: Path) -> None:
    """``R50+ViT-B_16.npz`` layout (Flax): HWIO kernels, split q/k/v, a class token and its position row."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    C = sd["norm.weight"].shape[0]
    w = {"embedding/kernel": _hwio(sd["patch_embed.proj.weight"]), "embedding/bias": sd["patch_embed.proj.bias"],
         "cls": torch.randn(1, 1, C),
         "Transformer/posembed_input/pos_embedding": torch.cat([torch.randn(1, 1, C), sd["pos_embed"]], dim=1),
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "pre_logits/kernel": torch.randn(C, C), "pre_logits/bias": torch.zeros(C)}
    w.update(_google_blocks(sd, len(model.blocks), C, model.blocks[0].attn.num_heads))
    w.update(_google_resnet(sd))
    np.savez(path, **{k: v.contiguous().numpy().astype(np.float32) for k, v in w.items()})


def test_google_npz(tmp_path: Path, hybrid: nn.Module) -> None:
    """The npz loads into the encoder (class token and its position row dropped, as TransUNet does); the decoder
    and head are reported as newly initialised."""
    import logging
    path = tmp_path / "R50+ViT-B_16.npz"
    _write_r50_vit_npz(hybrid, path)
    records: List[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("backbones").addHandler(handler)
    logging.getLogger("backbones").setLevel(logging.INFO)
    try:
        net = medvit.create_model("transunet", pretrained=path, **TINY).eval()
    finally:
        logging.getLogger("backbones").removeHandler(handler)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_tokens(net, x.repeat(1, 3, 1, 1)), hybrid.forward_features(x.repeat(1, 3, 1, 1)),
                                   rtol=0, atol=1e-4)
    report = "\n".join(records)
    assert "(google-npz (encoder only) format)" in report and "left at init: decoder.conv_more.0.weight" in report
    assert "segmentation_head.0.weight" in report and "encoder.cls_token" in report


def test_full_checkpoint_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = medvit.create_model("transunet", **TINY).eval()
    path = tmp_path / "transunet.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    net = medvit.create_model("transunet", pretrained=path, **TINY).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), src(x))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="token stride is 16"):
        TransUNet(**dict(TINY, decoder_channels=(8, 8, 4)))
    with pytest.raises(ValueError, match="n_skip"):
        TransUNet(**dict(TINY, n_skip=4))

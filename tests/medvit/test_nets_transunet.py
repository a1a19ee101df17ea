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


def _timm_hybrid(**enc) -> nn.Module:
    """timm R50+ViT without a class token (TransUNet drops it), every parameter moved off its init."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import _resnetv2
    torch.manual_seed(0)
    net = VisionTransformer(patch_size=1, num_classes=0, class_token=False, global_pool="avg", fc_norm=False,
                            embed_layer=partial(HybridEmbed, backbone=_resnetv2((1, 1, 1))), **{**ENC, **enc})
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
    net = medvit.create_model("transunet", pretrained=hybrid.state_dict(), resnet_variant="timm", **TINY).eval()
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
        net = medvit.create_model("transunet", pretrained=path, resnet_variant="timm", **TINY).eval()
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


# ---------------------------------------------------------------- the official TransUNet R50 + embeddings
class _OfficialStdConv2d(nn.Conv2d):
    """``StdConv2d`` of Beckschen/TransUNet: ``(w - mean) / sqrt(var + 1e-5)``, PyTorch padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return nn.functional.conv2d(x, (self.weight - m) / torch.sqrt(v + 1e-5), self.bias, self.stride,
                                    self.padding)


class _OfficialUnit(nn.Module):
    """``PreActBottleneck`` (whose forward is post-activation): GN(32, eps 1e-6), ``gn_proj = GroupNorm(C, C)``."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1, self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6), nn.GroupNorm(32, cmid, eps=1e-6)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv1 = _OfficialStdConv2d(cin, cmid, 1, bias=False)
        self.conv2 = _OfficialStdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.conv3 = _OfficialStdConv2d(cmid, cout, 1, bias=False)
        if stride != 1 or cin != cout:
            self.downsample = _OfficialStdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.gn_proj(self.downsample(x)) if hasattr(self, "downsample") else x
        y = torch.relu(self.gn1(self.conv1(x)))
        y = torch.relu(self.gn2(self.conv2(y)))
        return torch.relu(residual + self.gn3(self.conv3(y)))


class _OfficialEmbeddings(nn.Module):
    """``Embeddings`` with its hybrid ``ResNetV2`` (root: StdConv 7x7/2 pad 3 + GN + ReLU; unpadded 3x3/2 max pool in
    ``forward``; skips zero-padded to ``in_size / 4 / (i + 1)``) -> ``(tokens + position_embeddings, features)``."""

    def __init__(self, units, img: int, hidden: int, width: int = 64) -> None:
        super().__init__()
        self.hybrid_model = nn.Module()
        self.hybrid_model.root = nn.Sequential(_OfficialStdConv2d(3, width, 7, stride=2, padding=3, bias=False),
                                               nn.GroupNorm(32, width, eps=1e-6), nn.ReLU())
        self.hybrid_model.body = nn.ModuleList()
        cin = width
        for b, (n, mult) in enumerate(zip(units, (1, 2, 4))):
            block = nn.Sequential(*[_OfficialUnit(cin if u == 0 else 4 * width * mult, 4 * width * mult,
                                                  width * mult, 2 if (u == 0 and b > 0) else 1) for u in range(n)])
            self.hybrid_model.body.append(block)
            cin = 4 * width * mult
        self.patch_embeddings = nn.Conv2d(16 * width, hidden, 1, 1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, (img // 16) ** 2, hidden))

    def forward(self, x: torch.Tensor):
        b, _, in_size, _ = x.shape
        x = self.hybrid_model.root(x)
        features = [x]
        x = nn.functional.max_pool2d(x, 3, 2, 0)
        body = self.hybrid_model.body
        for i in range(len(body) - 1):
            x = body[i](x)
            right = int(in_size / 4 / (i + 1))
            feat = x
            if x.shape[2] != right:
                feat = torch.zeros(b, x.shape[1], right, right)
                feat[:, :, :x.shape[2], :x.shape[3]] = x
            features.append(feat)
        x = self.patch_embeddings(body[-1](x)).flatten(2).transpose(-1, -2)
        return x + self.position_embeddings, features[::-1]


def _official_load(emb: _OfficialEmbeddings, npz: Path) -> None:
    """``VisionTransformer.load_from`` / ``PreActBottleneck.load_from`` for the embeddings (HWIO -> OIHW)."""
    w = {k: torch.from_numpy(v) for k, v in np.load(npz).items()}
    conv = lambda t: t.permute(3, 2, 0, 1)  # noqa: E731
    rn = emb.hybrid_model
    with torch.no_grad():
        emb.patch_embeddings.weight.copy_(conv(w["embedding/kernel"]))
        emb.patch_embeddings.bias.copy_(w["embedding/bias"])
        pos = w["Transformer/posembed_input/pos_embedding"]
        emb.position_embeddings.copy_(pos if pos.shape == emb.position_embeddings.shape else pos[:, 1:])
        rn.root[0].weight.copy_(conv(w["conv_root/kernel"]))
        rn.root[1].weight.copy_(w["gn_root/scale"].view(-1))
        rn.root[1].bias.copy_(w["gn_root/bias"].view(-1))
        for b, block in enumerate(rn.body):
            for u, unit in enumerate(block):
                p = f"block{b + 1}/unit{u + 1}/"
                for r in ("1", "2", "3"):
                    getattr(unit, "conv" + r).weight.copy_(conv(w[f"{p}conv{r}/kernel"]))
                    getattr(unit, "gn" + r).weight.copy_(w[f"{p}gn{r}/scale"].view(-1))
                    getattr(unit, "gn" + r).bias.copy_(w[f"{p}gn{r}/bias"].view(-1))
                if hasattr(unit, "downsample"):
                    unit.downsample.weight.copy_(conv(w[f"{p}conv_proj/kernel"]))
                    unit.gn_proj.weight.copy_(w[f"{p}gn_proj/scale"].view(-1))
                    unit.gn_proj.bias.copy_(w[f"{p}gn_proj/bias"].view(-1))


def _timm_skips(hybrid: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """timm's R50 features at strides 2, 4, 8 (stem after GN+ReLU, then stage outputs)."""
    bb = hybrid.patch_embed.backbone
    s2 = bb.stem.norm(bb.stem.conv(x))
    s4 = bb.stages[0](bb.stem.pool(s2))
    return [s2, s4, bb.stages[1](s4)]


@pytest.fixture(scope="module")
def r50_npz(tmp_path_factory):
    """A random ``R50+ViT-B_16.npz``-layout file at 64 px (the max pool gives 15 px: the stride-4 skip is padded)."""
    hybrid = _timm_hybrid(img_size=64).eval()
    path = tmp_path_factory.mktemp("npz") / "R50+ViT-B_16.npz"
    _write_r50_vit_npz(hybrid, path)
    return hybrid, path


def _ours(net: TransUNet, x: torch.Tensor):
    """Our encoder's R50 skips (strides 2, 4, 8) and embedded tokens (before the ViT blocks)."""
    grid, skips = net.encoder.patch_embed.forward_features(x)
    return skips, net.encoder._add_tokens(grid)[0]


def test_official_resnet_variant_equals_the_official_code(r50_npz) -> None:
    """The default ``resnet_variant="official"`` equals the official TransUNet R50 + embeddings on the same npz."""
    _, path = r50_npz
    official = _OfficialEmbeddings((1, 1, 1), 64, 32).eval()
    _official_load(official, path)
    net = medvit.create_model("transunet", pretrained=path, **dict(TINY, img_size=64)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref_tokens, ref_feats = official(x)
        skips, tokens = _ours(net, x)
    assert [tuple(f.shape[1:]) for f in skips] == [(64, 32, 32), (256, 16, 16), (512, 8, 8)]
    for ours, ref in zip(skips, ref_feats[::-1]):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-5, atol=1e-5)


def test_timm_resnet_variant_equals_timm(r50_npz) -> None:
    """``resnet_variant="timm"`` equals timm's ``vit_base_r50_s16_224`` backbone (the npz's source) on the same
    npz, and the two variants differ (the official one is not timm's)."""
    hybrid, path = r50_npz
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    nets = {v: medvit.create_model("transunet", pretrained=path, resnet_variant=v, **dict(TINY, img_size=64)).eval()
            for v in ("timm", "official")}
    with torch.no_grad():
        skips, tokens = _ours(nets["timm"], x)
        for ours, ref in zip(skips, _timm_skips(hybrid, x)):
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_tokens(nets["timm"], x), hybrid.forward_features(x), rtol=1e-5, atol=1e-5)
        other = _ours(nets["official"], x)[1]
    rel = (other - tokens).norm() / tokens.norm()
    assert rel > 1e-2, float(rel)


def test_resnet_variant_choice() -> None:
    with pytest.raises(ValueError, match="resnet_variant"):
        TransUNet(**dict(TINY, resnet_variant="google"))

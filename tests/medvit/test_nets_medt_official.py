"""MedT vs the official ``medt_net`` (jeya-maria-jose/Medical-Transformer, ``lib/models/axialnet.py``).

The official state-dict layout is described here from the official module tree (global branch at the top level,
local branch with a ``_p`` suffix, ``AxialAttention_dynamic`` in the global blocks and ``AxialAttention_wopos`` in
the local ones); the official forward pass is re-evaluated functionally from such a state dict (per-patch double
loop over the 4 x 4 grid, per-term BatchNorms on logits and outputs, no 1/sqrt(d) scale) and compared with vtk's
``MedT`` loaded through ``medvit/convert/medt_official.py``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F

import medvit
from engine.errors import UserError
from medvit.convert.medt_official import convert_medt_official

__all__: List[str] = []

pytestmark = pytest.mark.usefixtures("one_thread")

Shapes = Dict[str, Tuple[int, ...]]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "flatten_index")
HEADS = 8


class _Layout:
    """Key -> shape of the official ``medt_net(AxialBlock_dynamic, AxialBlock_wopos, layers, s=0.125)``."""

    def __init__(self, img: int = 128, in_chans: int = 3, num_classes: int = 2, layers=(1, 2, 4, 1),
                 s: float = 0.125) -> None:
        self.shapes: Shapes = {}
        c = lambda n: int(n * s)  # noqa: E731
        self._stem("", in_chans, c(64))
        cin = self._stage("layer1", c(64), c(128), layers[0], 1, img // 2, "gated")
        cin = self._stage("layer2", cin, c(256), layers[1], 2, img // 2, "gated")
        self._conv("decoder4", c(256), c(512), 3, bias=True)
        self._conv("decoder5", c(128), c(256), 3, bias=True)
        self._conv("adjust", num_classes, c(128), 1, bias=True)
        self._stem("_p", in_chans, cin)  # built from ``self.inplanes`` after layer2: 2 * int(256 s)
        p = img // 4
        for i, (planes, span) in enumerate(zip((128, 256, 512, 1024), (p // 2, p // 2, p // 4, p // 8))):
            cin = self._stage(f"layer{i + 1}_p", cin, c(planes), layers[i], 1 if i == 0 else 2, span, "wopos")
        for name, o, i, stride in (("decoder1_p", 2048, 2048, 2), ("decoder2_p", 1024, 2048, 1),
                                   ("decoder3_p", 512, 1024, 1), ("decoder4_p", 256, 512, 1),
                                   ("decoder5_p", 128, 256, 1), ("decoderf", 128, 128, 1)):
            self._conv(name, c(o), c(i), 3, bias=True)
        self._conv("adjust_p", num_classes, c(128), 1, bias=True)

    def _conv(self, name: str, o: int, i: int, k: int, bias: bool = False) -> None:
        self.shapes[f"{name}.weight"] = (o, i, k, k)
        if bias:
            self.shapes[f"{name}.bias"] = (o,)

    def _bn(self, name: str, c: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            self.shapes[f"{name}.{leaf}"] = (c,)
        self.shapes[f"{name}.num_batches_tracked"] = ()

    def _stem(self, sfx: str, in_chans: int, width: int) -> None:
        self._conv(f"conv1{sfx}", width, in_chans, 7)
        self._conv(f"conv2{sfx}", 128, width, 3)
        self._conv(f"conv3{sfx}", width, 128, 3)
        for i, ch in ((1, width), (2, 128), (3, width)):
            self._bn(f"bn{i}{sfx}", ch)

    def _attn(self, name: str, c: int, span: int, kind: str) -> None:
        self.shapes[f"{name}.qkv_transform.weight"] = (2 * c, c, 1)
        self._bn(f"{name}.bn_qkv", 2 * c)
        pos = kind != "wopos"
        self._bn(f"{name}.bn_similarity", HEADS * (3 if pos else 1))
        self._bn(f"{name}.bn_output", c * (2 if pos else 1))
        if pos:
            self.shapes[f"{name}.relative"] = (2 * c // HEADS, 2 * span - 1)
            self.shapes[f"{name}.flatten_index"] = (span * span,)
        if kind == "gated":
            for g in ("f_qr", "f_kr", "f_sve", "f_sv"):
                self.shapes[f"{name}.{g}"] = ()

    def _stage(self, name: str, cin: int, planes: int, depth: int, stride: int, span: int, kind: str) -> int:
        for j in range(depth):
            b = f"{name}.{j}"
            self._conv(f"{b}.conv_down", planes, cin, 1)
            if kind == "wopos":
                self._conv(f"{b}.conv1", planes, planes, 1, bias=True)  # created, never called
            self._bn(f"{b}.bn1", planes)
            self._attn(f"{b}.hight_block", planes, span, kind)
            self._attn(f"{b}.width_block", planes, span, kind)
            self._conv(f"{b}.conv_up", 2 * planes, planes, 1)
            self._bn(f"{b}.bn2", 2 * planes)
            if j == 0 and (stride != 1 or cin != 2 * planes):
                self._conv(f"{b}.downsample.0", 2 * planes, cin, 1)
                self._bn(f"{b}.downsample.1", 2 * planes)
            cin = 2 * planes
            if j == 0 and stride > 1:
                span //= stride
        return cin


def _random_official(shapes: Shapes, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Well-conditioned random values: fan-in scaled kernels, BatchNorms off identity, gates off their init."""
    g = torch.Generator().manual_seed(seed)
    sd: Dict[str, torch.Tensor] = {}
    for k, shape in shapes.items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            sd[k] = torch.tensor(100)
        elif leaf == "flatten_index":
            n = int(round(shape[0] ** 0.5))
            sd[k] = (torch.arange(n)[:, None] - torch.arange(n)[None, :] + n - 1).reshape(-1)
        elif leaf == "running_var":
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif leaf in ("running_mean", "bias"):
            sd[k] = 0.2 * torch.randn(shape, generator=g)
        elif leaf in ("f_qr", "f_kr", "f_sve", "f_sv"):
            sd[k] = 0.3 + 0.7 * torch.rand((), generator=g)
        elif len(shape) == 1:  # BatchNorm weights
            sd[k] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        else:  # conv kernels, relative tables
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) if leaf != "relative" else shape[0]
            sd[k] = torch.randn(shape, generator=g) / fan_in ** 0.5
    return sd


# ----------------------------------------------------------------------------- the official forward, functionally
def _bn(x: torch.Tensor, w: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.batch_norm(x, w[f"{name}.running_mean"], w[f"{name}.running_var"], w[f"{name}.weight"],
                        w[f"{name}.bias"], False, 0.0, 1e-5)


def _official_attn(x: torch.Tensor, w: Dict[str, torch.Tensor], name: str, width: bool, stride: int) -> torch.Tensor:
    """One official axial attention (eval): rows of the attended axis, per-term BatchNorms, no scale."""
    x = x.permute(0, 2, 1, 3) if width else x.permute(0, 3, 1, 2)  # (N, W, C, H): attend over the last axis
    N, M, C, L = x.shape
    qkv = _bn(F.conv1d(x.reshape(N * M, C, L), w[f"{name}.qkv_transform.weight"]), w, f"{name}.bn_qkv")
    out_planes = qkv.shape[1] // 2
    gp = out_planes // HEADS
    q, k, v = qkv.reshape(N * M, HEADS, 2 * gp, L).split([gp // 2, gp // 2, gp], dim=2)  # (NM, g, c, L)
    qk = torch.einsum("bgci,bgcj->bgij", q, k)
    if f"{name}.relative" not in w:
        sim = _bn(qk, w, f"{name}.bn_similarity").softmax(dim=3)
        sv = torch.einsum("bgij,bgcj->bgci", sim, v).reshape(N * M, out_planes, L)
        out = _bn(sv, w, f"{name}.bn_output").reshape(N, M, out_planes, L)
    else:
        pair = torch.arange(L)[:, None] - torch.arange(L)[None, :] + L - 1  # [i, j] = i - j + L - 1
        emb = w[f"{name}.relative"][:, pair]  # (2 gp, L, L)
        qe, ke, ve = emb.split([gp // 2, gp // 2, gp], dim=0)
        qr = torch.einsum("bgci,cij->bgij", q, qe)
        kr = torch.einsum("bgci,cij->bgij", k, ke).transpose(2, 3)
        gated = f"{name}.f_qr" in w
        if gated:
            qr, kr = qr * w[f"{name}.f_qr"], kr * w[f"{name}.f_kr"]
        sim = _bn(torch.cat([qk, qr, kr], dim=1), w, f"{name}.bn_similarity")
        sim = sim.view(N * M, 3, HEADS, L, L).sum(dim=1).softmax(dim=3)
        sv = torch.einsum("bgij,bgcj->bgci", sim, v)
        sve = torch.einsum("bgij,cij->bgci", sim, ve)
        if gated:
            sv, sve = sv * w[f"{name}.f_sv"], sve * w[f"{name}.f_sve"]
        both = torch.cat([sv, sve], dim=-1).view(N * M, 2 * out_planes, L)
        out = _bn(both, w, f"{name}.bn_output").view(N, M, out_planes, 2, L).sum(dim=-2)
    out = out.permute(0, 2, 1, 3) if width else out.permute(0, 2, 3, 1)  # (N, C, H, W)
    return F.avg_pool2d(out, stride, stride) if stride > 1 else out


def _official_stage(x: torch.Tensor, w: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    j = 0
    while f"{name}.{j}.conv_down.weight" in w:
        b = f"{name}.{j}"
        stride = 2 if f"{b}.downsample.0.weight" in w and not name.startswith("layer1") else 1
        y = F.relu(_bn(F.conv2d(x, w[f"{b}.conv_down.weight"]), w, f"{b}.bn1"))
        y = _official_attn(y, w, f"{b}.hight_block", False, 1)
        y = F.relu(_official_attn(y, w, f"{b}.width_block", True, stride))
        y = _bn(F.conv2d(y, w[f"{b}.conv_up.weight"]), w, f"{b}.bn2")
        if f"{b}.downsample.0.weight" in w:
            x = _bn(F.conv2d(x, w[f"{b}.downsample.0.weight"], stride=stride), w, f"{b}.downsample.1")
        x = F.relu(y + x)
        j += 1
    return x


def _official_stem(x: torch.Tensor, w: Dict[str, torch.Tensor], sfx: str) -> torch.Tensor:
    x = F.relu(_bn(F.conv2d(x, w[f"conv1{sfx}.weight"], stride=2, padding=3), w, f"bn1{sfx}"))
    x = F.relu(_bn(F.conv2d(x, w[f"conv2{sfx}.weight"], padding=1), w, f"bn2{sfx}"))
    return F.relu(_bn(F.conv2d(x, w[f"conv3{sfx}.weight"], padding=1), w, f"bn3{sfx}"))


def _up(x: torch.Tensor, w: Dict[str, torch.Tensor], name: str, stride: int = 1) -> torch.Tensor:
    x = F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], stride=stride, padding=1)
    return F.relu(F.interpolate(x, scale_factor=(2, 2), mode="bilinear"))


def _official_forward(x: torch.Tensor, w: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``medt_net._forward_impl`` in eval mode on an official state dict (patch grid 4 x 4 of ``H/4``)."""
    h = _official_stem(x, w, "")
    x1 = _official_stage(h, w, "layer1")
    x2 = _official_stage(x1, w, "layer2")
    g = _up(_up(x2, w, "decoder4") + x1, w, "decoder5")  # (B, 16, H, W)
    loc = torch.zeros_like(g)
    p = x.shape[2] // 4
    for i in range(4):
        for j in range(4):
            feats = [_official_stem(x[:, :, p * i:p * (i + 1), p * j:p * (j + 1)], w, "_p")]
            for s in range(1, 5):
                feats.append(_official_stage(feats[-1], w, f"layer{s}_p"))
            y = _up(feats[4], w, "decoder1_p", stride=2) + feats[4]
            for name, skip in (("decoder2_p", feats[3]), ("decoder3_p", feats[2]), ("decoder4_p", feats[1])):
                y = _up(y, w, name) + skip
            loc[:, :, p * i:p * (i + 1), p * j:p * (j + 1)] = _up(y, w, "decoder5_p")
    y = F.relu(F.conv2d(g + loc, w["decoderf.weight"], w["decoderf.bias"], padding=1))
    return F.conv2d(F.relu(y), w["adjust.weight"], w["adjust.bias"])


# ---------------------------------------------------------------------------------------------------------- tests
def _params(shapes: Shapes) -> int:
    return sum(int(torch.Size(s).numel()) for k, s in shapes.items() if not k.endswith(BUFFERS))


def test_official_parameter_count() -> None:
    """The official MedT at 128 px, 3 -> 2 channels has 1,560,140 parameters; vtk's builds every module the
    official forward calls: all of them except the 8 unused ``AxialBlock_wopos.conv1`` and ``adjust_p``."""
    shapes = _Layout().shapes
    assert _params(shapes) == 1_560_140
    dead = {k: s for k, s in shapes.items() if k.startswith("adjust_p.") or (".conv1." in k and "_p." in k)}
    assert len(dead) == 2 * 8 + 2 and _params(dead) == 35_570
    with torch.device("meta"):
        net = medvit.create_model("medt")
    assert sum(p.numel() for p in net.parameters()) == 1_560_140 - 35_570
    assert net.local_branch.stem.conv1.weight.shape == (64, 3, 7, 7)  # official 3 -> 64 -> 128 -> 64
    assert net.local_branch.stem.conv2.weight.shape == (128, 64, 3, 3)
    assert net.local_branch.stem.conv3.weight.shape == (64, 128, 3, 3)


@pytest.mark.parametrize("in_chans,num_classes", [(3, 2), (1, 3)])
def test_official_state_dict_loads_strictly(in_chans: int, num_classes: int) -> None:
    """Every tensor of the official layout lands on a vtk tensor of the same shape (the builder loads with
    ``strict=True`` and rejects unexpected, missing or mis-shaped keys); only buffers and unused modules drop."""
    shapes = _Layout(in_chans=in_chans, num_classes=num_classes).shapes
    sd = _random_official(shapes)
    net = medvit.create_model("medt", pretrained=sd, in_chans=in_chans, num_classes=num_classes)
    conv = convert_medt_official(sd, net)
    ours = net.state_dict()
    assert set(conv) == set(ours)
    dropped = [k for k in sd if k.endswith("flatten_index") or k.startswith("adjust_p.")
               or re.search(r"_p\.\d+\.conv1\.", k)]
    assert len(dropped) == 2 * 8 + 2 + sum(k.endswith("flatten_index") for k in sd)
    assert len(conv) == len(sd) - len(dropped)
    for k, v in conv.items():
        torch.testing.assert_close(ours[k], v.reshape(ours[k].shape), rtol=0, atol=0)
    with pytest.raises(UserError, match="missing"):
        medvit.create_model("medt", pretrained={k: v for k, v in sd.items() if not k.startswith("decoderf.")},
                            in_chans=in_chans, num_classes=num_classes)


@pytest.fixture(scope="module")
def official_pair():
    sd = _random_official(_Layout().shapes, seed=3)
    net = medvit.create_model("medt", pretrained=sd).eval().double()
    return net, {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}


def test_matches_the_official_forward(official_pair) -> None:
    """Eval-mode logits equal the official forward on the same state dict (float64, so the comparison checks the
    arithmetic, not rounding)."""
    net, sd = official_pair
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        ref = _official_forward(x, sd)
        out = net(x)
    assert ref.abs().mean() > 1e-2  # non-trivial logits
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_official_term_order_matters(official_pair) -> None:
    """The interleaved ``bn_output`` channels (``[P v | P r^v]`` per channel) and the ``bn_similarity`` term order
    reach the logits: swapping either breaks the parity above."""
    net, sd = official_pair
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        for key, flip in (("bn_output", lambda t: t.view(-1, 2).flip(1).reshape(-1)),
                          ("bn_similarity", lambda t: t.view(3, -1).roll(1, 0).reshape(-1))):
            name = f"layer1.0.hight_block.{key}.weight"
            bad = dict(sd, **{name: flip(sd[name])})
            assert (_official_forward(x, bad) - ref).abs().max() > 1e-4, key

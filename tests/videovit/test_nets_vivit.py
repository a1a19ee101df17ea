"""ViViT models 1-4: shapes, HF parity (both HF key layouts), Scenic checkpoints (npz and Flax msgpack, models 1
and 2), and initialisation from a timm image ViT."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import videovit
from engine.errors import UserError
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


# ----------------------------------------------------------------------------------- Scenic (JAX/Flax) files
def _flax_encoder(sd: dict, blocks: str, pos: str, norm: str, root: str, heads: int) -> dict:
    """vtk block/pos/norm tensors -> Scenic ``Encoder`` parameter paths (Flax layouts)."""
    out = {f"{root}/posembed_input/pos_embedding": sd[pos], f"{root}/encoder_norm/scale": sd[f"{norm}.weight"],
           f"{root}/encoder_norm/bias": sd[f"{norm}.bias"]}
    i = 0
    while f"{blocks}.{i}.norm1.weight" in sd:
        b, e = f"{blocks}.{i}.", f"{root}/encoderblock_{i}/"
        D = sd[b + "norm1.weight"].shape[0]
        for ln, ours in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            out[f"{e}{ln}/scale"], out[f"{e}{ln}/bias"] = sd[f"{b}{ours}.weight"], sd[f"{b}{ours}.bias"]
        a = e + "MultiHeadDotProductAttention_0/"
        for name, w, bias in zip(("query", "key", "value"), sd[b + "attn.qkv.weight"].chunk(3),
                                 sd[b + "attn.qkv.bias"].chunk(3)):
            out[f"{a}{name}/kernel"] = w.t().reshape(D, heads, D // heads)  # DenseGeneral (in, heads, head_dim)
            out[f"{a}{name}/bias"] = bias.reshape(heads, D // heads)
        out[a + "out/kernel"] = sd[b + "attn.proj.weight"].t().reshape(heads, D // heads, D)
        out[a + "out/bias"] = sd[b + "attn.proj.bias"]
        for r in (0, 1):
            out[f"{e}MlpBlock_0/Dense_{r}/kernel"] = sd[f"{b}mlp.fc{r + 1}.weight"].t()  # Dense (in, out)
            out[f"{e}MlpBlock_0/Dense_{r}/bias"] = sd[f"{b}mlp.fc{r + 1}.bias"]
        i += 1
    return out


def _to_scenic(model, heads: int = 2) -> dict:
    """A vtk ViViT (model 1) or ViViT FE (model 2) as the flattened Scenic parameter tree ('/'-joined paths)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].permute(2, 3, 4, 1, 0),  # Flax Conv (t, h, w, C, D)
           "embedding/bias": sd["patch_embed.proj.bias"],
           "output_projection/kernel": sd["head.weight"].t(), "output_projection/bias": sd["head.bias"]}
    if "temporal_norm.weight" in sd:  # model 2: SpaceTimeViViT
        out["cls_SpatialTransformer"] = sd["cls_token"]
        out["cls_TemporalTransformer"] = sd["temporal_cls_token"]
        out.update(_flax_encoder(sd, "blocks", "pos_embed", "norm", "SpatialTransformer", heads))
        out.update(_flax_encoder(sd, "temporal_blocks", "temporal_pos_embed", "temporal_norm", "TemporalTransformer",
                                 heads))
    else:
        out["cls"] = sd["cls_token"]
        out.update(_flax_encoder(sd, "blocks", "pos_embed", "norm", "Transformer", heads))
    return {k: v.contiguous().numpy() for k, v in out.items()}


SCENIC = {"vivit_base_16x2_224": TINY, "vivit_base_fe_16x2_224": {**TINY, "temporal_depth": 2}}


def _scenic_source(name: str):
    torch.manual_seed(0)
    return randomize_(videovit.create_model(name, **SCENIC[name]), 0.2).eval()


@pytest.mark.parametrize("name", list(SCENIC))
@pytest.mark.parametrize("prefix", ["", "optimizer/target/"])
def test_scenic_npz_round_trip(tmp_path, name: str, prefix: str) -> None:
    """A flattened Scenic ``.npz`` (optionally a whole train state, with optimizer moments under the same names)
    loads into the vtk model and gives the source model's logits."""
    src = _scenic_source(name)
    flat = {prefix + k: v for k, v in _to_scenic(src).items()}
    if prefix:  # momentum buffers of the same shapes must not be taken for the parameters
        flat.update({f"optimizer/state/param_states/{k}/grad_ema": np.ones_like(v) for k, v in _to_scenic(src).items()})
    path = tmp_path / "vivit.npz"
    np.savez(path, **flat)
    x = _clip()
    with torch.no_grad():
        out = videovit.create_model(name, pretrained=path, **SCENIC[name]).eval()(x)
        torch.testing.assert_close(out, src(x), rtol=0, atol=1e-6)
        assert out.abs().max() > 1e-2


def test_scenic_converter_detects_a_misplaced_weight() -> None:
    src = _scenic_source("vivit_base_16x2_224")
    flat = {k: torch.from_numpy(v) for k, v in _to_scenic(src).items()}
    a = "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/"
    flat[a + "query/kernel"], flat[a + "key/kernel"] = flat[a + "key/kernel"], flat[a + "query/kernel"]
    x = _clip()
    with torch.no_grad():
        out = videovit.create_model("vivit_base_16x2_224", pretrained=flat, **TINY).eval()(x)
        assert (out - src(x)).abs().max() > 1e-3


def test_scenic_model_mismatch_is_a_user_error() -> None:
    flat = {k: torch.from_numpy(v) for k, v in _to_scenic(_scenic_source("vivit_base_fe_16x2_224")).items()}
    with pytest.raises(UserError, match="model 2 .*vivit_base_fe_16x2_224"):
        videovit.create_model("vivit_base_16x2_224", pretrained=flat, **TINY)


def _flax_msgpack(tree: dict, chunk: str) -> bytes:
    """Flax ``serialization.to_bytes`` of a nested dict: ndarrays as ext type 1 = msgpack(shape, dtype, bytes),
    the ``chunk`` leaf split the way Flax splits arrays above its chunk size."""
    msgpack = pytest.importorskip("msgpack")

    def ext(obj):
        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(1, msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes("C")), use_bin_type=True))
        return obj

    def nest(flat: dict) -> dict:
        root: dict = {}
        for k, v in flat.items():
            *path, leaf = k.split("/")
            node = root
            for p in path:
                node = node.setdefault(p, {})
            if k == chunk:
                parts = np.array_split(v.reshape(-1), 2)
                v = {"__msgpack_chunked_array__": True, "shape": {str(i): s for i, s in enumerate(v.shape)},
                     "chunks": {str(i): c for i, c in enumerate(parts)}}
            node[leaf] = v
        return root

    return msgpack.packb({"params": nest(tree), "global_step": 7}, default=ext, strict_types=True)


@pytest.mark.parametrize("name", list(SCENIC))
def test_scenic_msgpack_checkpoint(tmp_path, name: str) -> None:
    from videovit.convert.scenic_vivit import read_flax_checkpoint
    src = _scenic_source(name)
    root = "Transformer" if name == "vivit_base_16x2_224" else "SpatialTransformer"
    path = tmp_path / "checkpoint_7"
    path.write_bytes(_flax_msgpack(_to_scenic(src), f"{root}/posembed_input/pos_embedding"))
    sd = read_flax_checkpoint(path)
    assert f"params/{root}/posembed_input/pos_embedding" in sd and "global_step" not in sd
    x = _clip()
    with torch.no_grad():
        out = videovit.create_model(name, pretrained=sd, **SCENIC[name]).eval()(x)
        torch.testing.assert_close(out, src(x), rtol=0, atol=1e-6)

"""STAM (arXiv:2103.13915), VTN (arXiv:2102.00719) and Longformer-style attention (arXiv:2004.05150)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

import videovit
from backbones._builder import load_pretrained
from backbones.layers.local_global_attention import LocalGlobalAttention, local_global_mask
from engine.errors import UserError
from videovit.convert import VTN_CONVERTERS
from videovit.convert.vtn_official import convert_vtn_official
from videovit.nets.stam import STAM
from videovit.nets.vtn import VTN

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from transformers import LongformerConfig, LongformerModel  # noqa: E402
from transformers.models.longformer.modeling_longformer import LongformerSelfAttention  # noqa: E402

VIT_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ local + global attention
@pytest.mark.parametrize("mode", ["dense", "chunked"])
@pytest.mark.parametrize("n", [7, 24, 31])
def test_local_global_matches_dense_masked_reference(mode, n):
    """Shared projections: exactly SDPA with the explicit band + global mask (and key padding)."""
    torch.manual_seed(0)
    attn = LocalGlobalAttention(32, num_heads=4, attention_window=6, num_global_tokens=1,
                                separate_global_proj=False, mode=mode).eval()
    x = torch.randn(2, n, 32, generator=_gen(1))
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, n - 3:] = True
    q, k, v = attn.qkv(x).reshape(2, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
    allowed = local_global_mask(n, 3, 1)[None, None] & ~pad[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    ref = attn.proj(ref.transpose(1, 2).reshape(2, n, 32))
    with torch.no_grad():
        out = attn(x, pad)
    torch.testing.assert_close(out[~pad], ref[~pad], atol=1e-5, rtol=1e-5)


def test_local_global_matches_hf_longformer_self_attention():
    """Separate global projections, padding and a global CLS: equal to HF ``LongformerSelfAttention``."""
    torch.manual_seed(0)
    cfg = LongformerConfig(hidden_size=32, num_attention_heads=4, attention_window=[6],
                           attention_probs_dropout_prob=0.0)
    ref = LongformerSelfAttention(cfg, layer_id=0).eval()
    sd = {f"qkv{g}.{p}": torch.cat([getattr(ref, f"{n}{g}").state_dict()[p] for n in ("query", "key", "value")])
          for g in ("", "_global") for p in ("weight", "bias")}
    sd.update({"proj.weight": torch.eye(32), "proj.bias": torch.zeros(32)})  # HF applies its dense later
    x = torch.randn(2, 24, 32, generator=_gen(2))
    pad = torch.zeros(2, 24, dtype=torch.bool)
    pad[1, 19:] = True
    m = torch.zeros(2, 24)
    m[:, 0], m[pad] = 10000.0, -10000.0
    with torch.no_grad():
        expected = ref(x, attention_mask=m, is_index_masked=m < 0, is_index_global_attn=m > 0,
                       is_global_attn=True)[0]
    for mode in ("dense", "chunked"):
        ours = LocalGlobalAttention(32, 4, attention_window=6, mode=mode).eval()
        ours.load_state_dict(sd)
        with torch.no_grad():
            torch.testing.assert_close(ours(x, pad)[~pad], expected[~pad], atol=1e-5, rtol=1e-5)


def test_chunked_memory_is_linear_in_length():
    """The chunked path never builds an (N, N) mask: its mask has N * (3w + G) entries."""
    attn = LocalGlobalAttention(16, 2, attention_window=4, mode="chunked").eval()
    seen = []
    orig = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(0 if attn_mask is None else attn_mask.numel() // q.shape[0])
        return orig(q, k, v, attn_mask=attn_mask, **kw)

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "scaled_dot_product_attention", spy)
        attn(torch.randn(1, 400, 16))
    assert max(seen) == 400 * (3 * 2 + 1)  # local chunks: N * (3w + G); the global row has no mask


def test_local_global_ill_args():
    with pytest.raises(ValueError, match="even"):
        LocalGlobalAttention(32, 4, attention_window=5)
    with pytest.raises(ValueError, match="divisible"):
        LocalGlobalAttention(30, 4)


# ------------------------------------------------------------------------------------------------------ STAM
def test_stam_spatial_part_matches_timm_vit():
    """A timm ViT initialises the spatial part of a STAM built with the timm ViT's configuration."""
    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=5, **VIT_TINY).eval()
    stam = videovit.create_model("stam_16", pretrained=ref.state_dict(), num_frames=3, temporal_depth=1,
                                 temporal_heads=2, temporal_mlp_dim=64, num_classes=7, qkv_bias=True, norm_eps=1e-6,
                                 **VIT_TINY).eval()
    x = torch.randn(2, 3, 3, 32, 32, generator=_gen(3))
    with torch.no_grad():
        frames = stam.forward_spatial(x)  # (B, T, D)
        for t in range(3):
            torch.testing.assert_close(frames[:, t], ref.forward_features(x[:, :, t])[:, 0], atol=1e-5, rtol=1e-5)
        assert stam(x).shape == (2, 7)


STAM_TINY = dict(num_frames=3, temporal_depth=2, temporal_heads=2, temporal_mlp_dim=48, num_classes=7, **VIT_TINY)


def _official_stam(frames: int = 3):
    """The official STAM module tree (Alibaba-MIIL/STAM ``transformer_model.py``/``temporal_aggregation.py``): a
    ViT without qkv bias and with PyTorch's LayerNorm eps (timm's ViT with those options has the same keys and
    forward), its ``head`` after ``aggregate``: ``TAggregate`` = class token + ``(1, T+1, D)`` table + a
    sequence-first ``nn.TransformerEncoder`` (``d_model``, ``nhead``, default FFN/dropout) with a final LayerNorm."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=7, qkv_bias=False,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-5), **VIT_TINY).eval()
    agg = torch.nn.Module()
    agg.transformer_enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(32, 2, 48), 2,
                                                      norm=torch.nn.LayerNorm(32), enable_nested_tensor=False)
    agg.cls_token = torch.nn.Parameter(torch.randn(1, 1, 32, generator=_gen(20)))
    agg.pos_embed = torch.nn.Parameter(torch.randn(1, frames + 1, 32, generator=_gen(21)))
    agg.eval()
    vit.aggregate = agg
    for p in vit.parameters():  # every tensor off its init (LayerNorms, biases)
        p.data.add_(0.05 * torch.randn(p.shape, generator=_gen(22)))
    return vit


def _official_stam_forward(vit, x: torch.Tensor) -> torch.Tensor:
    """``VisionTransformer.forward`` with ``aggregate``: per-frame ``norm(x)[:, 0]``, then ``TAggregate.forward``
    (frames batched as ``(nvids * T, C, H, W)``, the encoder run sequence-first), then ``head``."""
    B, C, T = x.shape[:3]
    frames = x.transpose(1, 2).reshape(B * T, C, *x.shape[3:])
    f = vit.forward_features(frames)[:, 0].view(B, T, -1)  # (nvids, T, D)
    agg = vit.aggregate
    seq = torch.cat([agg.cls_token.expand(B, -1, -1), f], dim=1) + agg.pos_embed  # (B, 1 + T, D)
    return vit.head(agg.transformer_enc(seq.transpose(0, 1))[0])


def test_stam_official_checkpoint_loads_with_defaults(tmp_path):
    """An official STAM checkpoint (``{'model': state_dict}``, as the official infer.py reads) loads into
    ``stam_16`` with its defaults (no qkv bias, LayerNorm eps 1e-5) and gives the official logits."""
    official = _official_stam()
    path = tmp_path / "stam_16.pth"
    torch.save({"model": official.state_dict()}, path)
    stam = videovit.create_model("stam_16", pretrained=path, **STAM_TINY).eval()
    assert stam.blocks[0].attn.qkv.bias is None and stam.norm.eps == 1e-5
    x = torch.randn(2, 3, 3, 32, 32, generator=_gen(23))
    with torch.no_grad():
        ref = _official_stam_forward(official, x)
        torch.testing.assert_close(stam(x), ref, atol=1e-5, rtol=1e-5)
        assert ref.abs().max() > 1e-2


def test_stam_timm_weights_need_the_timm_config():
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **VIT_TINY)
    with pytest.raises(UserError, match="qkv_bias=True, norm_eps=1e-6"):
        videovit.create_model("stam_16", pretrained=ref.state_dict(), **STAM_TINY)


@pytest.mark.parametrize("name,frames", [("stam_8", 8), ("stam_16", 16), ("stam_32", 32), ("stam_64", 64)])
def test_stam_registry_entries(name, frames):
    meta = videovit.registry.metadata(name)
    assert meta["num_frames"] == frames and meta["input_size"] == (3, frames, 224, 224)
    with torch.device("meta"):
        m = videovit.create_model(name)
    assert m.num_frames == frames and m.aggregate.pos_embed.shape == (1, frames + 1, 768)
    assert m.blocks[0].attn.qkv.bias is None and m.norm.eps == 1e-5
    assert videovit.registry.resolve("stam") == "stam_16"


def test_stam_temporal_part_is_torch_transformer_encoder():
    """The temporal class token equals nn.TransformerEncoder applied to [cls] + frames + pos (official TAggregate)."""
    torch.manual_seed(0)
    stam = STAM(num_frames=3, temporal_depth=2, temporal_heads=2, temporal_mlp_dim=48, num_classes=4,
                **VIT_TINY).eval()
    f = torch.randn(2, 3, 32, generator=_gen(4))
    agg = stam.aggregate
    seq = torch.cat([agg.cls_token.expand(2, -1, -1), f], 1) + agg.pos_embed  # (B, 1 + T, D)
    with torch.no_grad():
        ref = agg.transformer_enc(seq)
        torch.testing.assert_close(agg(f), ref)
        stam.aggregate.pos_embed.add_(1.0)
        assert not torch.allclose(agg(f), ref)


def test_stam_interface():
    torch.manual_seed(0)
    m = videovit.create_model("stam_16", **videovit.registry.tiny_overrides("stam_16")).eval()
    x = torch.randn(1, 3, 4, 32, 32, generator=_gen(5))
    feats = m.forward_features(x)
    assert feats.shape == (1, 5, 32) and m.forward_head(feats, pre_logits=True).shape == (1, 32)
    maps = m.forward_intermediates(x, indices=1, intermediates_only=True)
    assert [tuple(t.shape) for t in maps] == [(1, 32, 4, 4, 4)]
    toks = m.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
    assert toks[0].shape == (1, 4 * 16, 32)
    with torch.no_grad():  # eval: frames go through the ViT in chunks; same result
        m.frame_chunk_size = 3
        torch.testing.assert_close(m(x), m.forward_head(feats))


# ------------------------------------------------------------------------------------------------------- VTN
VTN_TINY = dict(VIT_TINY, temporal_depth=2, temporal_heads=2, temporal_mlp_dim=64, attention_window=4,
                max_positions=40, num_classes=6)


def _official_vtn_forward(vtn, hf, cls_token, x, window, max_pos):
    """bomri/SlowFast VTN.forward with HF LongformerModel (padding to the window, token types, position ids)."""
    f = vtn.forward_spatial(x)
    B, T, _ = f.shape
    f = torch.cat([cls_token.expand(B, -1, -1), f], 1)
    am = torch.ones(B, T + 1, dtype=torch.long)
    am[:, 0] = 2
    pad = (window - (T + 1) % window) % window
    f = F.pad(f.permute(0, 2, 1), (0, pad), value=-1).permute(0, 2, 1)
    am = F.pad(am, (0, pad), value=0)
    pos = F.pad(torch.arange(T).expand(B, T), (1, pad), value=0) % (max_pos - 2)
    pos[:, 0] = max_pos - 2
    pos[am == 0] = max_pos - 1
    tt = torch.zeros(f.shape[:2], dtype=torch.long)
    tt[:, 0] = 1
    out = hf(inputs_embeds=f, attention_mask=am, token_type_ids=tt, position_ids=pos).last_hidden_state
    return out[:, :T + 1]


@pytest.fixture(scope="module")
def vtn_pair():
    torch.manual_seed(0)
    vtn = VTN(**VTN_TINY).eval()
    cfg = LongformerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           attention_window=[4, 4], max_position_embeddings=40, pad_token_id=-1, vocab_size=2)
    hf = LongformerModel(cfg, add_pooling_layer=False).eval()
    sd = {"temporal_encoder." + k: v for k, v in hf.state_dict().items()}
    sd.update({"backbone." + k: v for k, v in vtn.state_dict().items() if not k.startswith(("temporal", "mlp"))})
    sd.update({k: torch.randn(v.shape, generator=_gen(6)) for k, v in vtn.state_dict().items()
               if k.startswith("mlp_head")})
    sd["cls_token"] = torch.randn(1, 1, 32, generator=_gen(7))
    load_pretrained(vtn, sd, VTN_CONVERTERS)
    return vtn, hf, sd


@pytest.mark.parametrize("frames", [4, 21])  # 21 frames run the chunked (O(N*w)) attention path
def test_vtn_matches_official_hf_longformer(vtn_pair, frames):
    vtn, hf, sd = vtn_pair
    x = torch.randn(1, 3, frames, 32, 32, generator=_gen(frames))
    with torch.no_grad():
        ref = _official_vtn_forward(vtn, hf, sd["cls_token"], x, 4, 40)
        tokens = vtn.forward_features(x)
        torch.testing.assert_close(tokens, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vtn(x), vtn.mlp_head(ref[:, 0]), atol=1e-4, rtol=1e-4)


def test_vtn_every_converted_weight_matters(vtn_pair):
    """Each converted temporal tensor (each fused q/k/v slice) reaches the compared tokens: a mis-mapped
    tensor would break the parity test above. Key biases are skipped: they shift every score of a query by the
    same amount, which softmax ignores (in HF as in ours)."""
    vtn, _, sd = vtn_pair
    conv = convert_vtn_official(sd, vtn)
    x = torch.randn(1, 3, 9, 32, 32, generator=_gen(8))
    tokens = vtn.forward_features(x)
    (tokens * torch.randn(tokens.shape, generator=_gen(9))).sum().backward()
    params = dict(vtn.named_parameters())
    for k in [k for k in conv if k.startswith("temporal_") and k != "temporal_embed.position_embeddings.weight"]:
        grads = params[k].grad.chunk(3) if ".qkv" in k else [params[k].grad]
        if ".qkv" in k and k.endswith("bias"):
            grads = [grads[0], grads[2]]
        assert all(g.abs().max() > 1e-7 for g in grads), k
    vtn.zero_grad()


def test_vtn_position_limits(vtn_pair):
    vtn, _, _ = vtn_pair
    x = torch.randn(1, 3, 2, 32, 32, generator=_gen(10))
    with pytest.raises(ValueError, match="position table"):
        vtn(x, position_ids=torch.tensor([[0, 38]]))
    vtn.pos_overflow = "wrap"
    with torch.no_grad():
        torch.testing.assert_close(vtn(x, torch.tensor([[0, 38]])), vtn(x, torch.tensor([[0, 0]])))
    vtn.pos_overflow = "error"


def test_vtn_timm_init_and_interface():
    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **VIT_TINY).eval()
    vtn = videovit.create_model("vtn_vit_base", pretrained=ref.state_dict(), **VTN_TINY).eval()
    x = torch.randn(2, 3, 5, 32, 32, generator=_gen(11))
    with torch.no_grad():
        torch.testing.assert_close(vtn.forward_spatial(x)[:, 2], ref.forward_features(x[:, :, 2])[:, 0])
        assert vtn(x).shape == (2, 6)
        assert vtn.forward_head(vtn.forward_features(x), pre_logits=True).shape == (2, 32)
    assert vtn.forward_intermediates(x, indices=1, intermediates_only=True)[0].shape == (2, 32, 5, 4, 4)


def test_vtn_grad_checkpointing_equivalent():
    torch.manual_seed(0)
    m = VTN(**dict(VTN_TINY, temporal_dropout=0.0, head_dropout=0.0))
    x = torch.randn(1, 3, 3, 32, 32, generator=_gen(12))
    ref = m(x).sum()
    ref.backward()
    g = m.temporal_encoder.blocks[0].attn.qkv.weight.grad.clone()
    m.zero_grad()
    m.set_grad_checkpointing(True)
    out = m(x).sum()
    out.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(m.temporal_encoder.blocks[0].attn.qkv.weight.grad, g)


def test_vtn_ill_args():
    with pytest.raises(ValueError, match="pos_overflow"):
        VTN(pos_overflow="clip", **VIT_TINY)
    with pytest.raises(ValueError, match="even"):
        videovit.create_model("vtn_vit_base", attention_window=7, temporal_heads=2, **VIT_TINY)


@pytest.mark.parametrize("attn_mode", ["dense", "chunked"])
def test_vtn_frame_mask_batches_videos_of_different_lengths(attn_mode):
    """A 4-frame video padded to 7 frames next to a 7-frame one gives its own unpadded logits with frame_mask."""
    import videovit

    torch.manual_seed(0)
    tiny = videovit.registry.tiny_overrides("vtn_vit_base")
    model = videovit.create_model("vtn_vit_base", **dict(tiny, attention_window=2, attn_mode=attn_mode)).eval()
    long, short = torch.randn(1, 3, 7, 32, 32), torch.randn(1, 3, 4, 32, 32)
    padded = torch.cat([short, torch.randn(1, 3, 3, 32, 32)], dim=2)  # junk in the padding frames
    batch = torch.cat([long, padded])
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    cls = lambda v, m=None: model.forward_features(v, frame_mask=m)[:, 0]  # noqa: E731  (B, D)
    with torch.no_grad():
        out = cls(batch, mask)
        assert torch.allclose(out[1], cls(short)[0], atol=1e-5)
        assert torch.allclose(out[0], cls(long)[0], atol=1e-5)
        assert (cls(batch)[1] - cls(short)[0]).abs().max() > 1e-3  # without the mask the padding leaks in
        assert torch.allclose(model(batch, frame_mask=mask)[1], model(short)[0], atol=1e-6)
    with pytest.raises(ValueError, match="frame_mask"):
        model(batch, frame_mask=mask[:, :3])

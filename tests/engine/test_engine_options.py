"""Precision, accumulation, clipping, schedules, config checks, sampler sharding and load_run."""

import math

import pytest
import torch

from engine import TrainConfig, UserError, config_from_cli, fit, load_run, parse_key_values
from engine.data import EpochBatchSampler
from engine.metrics import read_metrics
from engine.optim import build_optimizer, build_scheduler, lr_factor
from engine_tasks import ToyTask, base_config, mlp, train_losses

__all__: list = []


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("32", torch.float32),
                                             ("16-mixed", torch.float16)])
def test_precision_autocast_on_cpu(tmp_path, precision, dtype):
    task = ToyTask()
    fit(base_config(tmp_path / "run", precision=precision, max_steps=3, val_every=0), task)
    assert task.autocast_dtypes and set(task.autocast_dtypes) == {dtype}
    assert all(math.isfinite(v) for v in train_losses(tmp_path / "run").values())
    assert all(v.dtype == torch.float32 for v in load_run(tmp_path / "run")[1].values())  # master weights fp32
    scaler = torch.load(tmp_path / "run" / "checkpoints" / "last.state.pt", weights_only=True)["scaler"]
    assert bool(scaler) == (precision == "16-mixed")  # GradScaler only for 16-mixed


def test_grad_accum_matches_full_batch(tmp_path):
    # fp32: accumulation equals the full batch only up to fp32 rounding (bf16 autocast rounds each half apart)
    common = dict(model_args={"dropout": 0.0}, max_steps=6, val_every=0, precision="32")
    fit(base_config(tmp_path / "full", **common), ToyTask())
    fit(base_config(tmp_path / "accum", grad_accum=2, **common), ToyTask())
    full, accum = load_run(tmp_path / "full")[1], load_run(tmp_path / "accum")[1]
    for k in full:
        torch.testing.assert_close(accum[k], full[k], rtol=0, atol=1e-6)
    assert train_losses(tmp_path / "accum") == pytest.approx(train_losses(tmp_path / "full"), abs=1e-6)


def test_gradient_clipping_bounds_the_update(tmp_path):
    clip, lr = 1e-3, 1.0
    task = ToyTask()
    cfg = base_config(tmp_path / "run", optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=lr, schedule="constant",
                      warmup_steps=0, clip_grad=clip, max_steps=1, val_every=0)
    fit(cfg, task)
    after = load_run(tmp_path / "run")[1]
    delta = torch.sqrt(sum(((after[k] - task.initial_state[k]) ** 2).sum() for k in after))
    assert delta.item() == pytest.approx(lr * clip, rel=1e-4)
    logged = [r["grad_norm"] for r in read_metrics(tmp_path / "run") if "grad_norm" in r]
    assert logged and logged[0] > 10 * clip  # clipping really had to act


@pytest.mark.parametrize("step", [0, 4, 9, 10, 55, 99, 100])
def test_schedule_values(step):
    warmup, total = 10, 100

    def cosine(s):
        return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))

    def poly(s):
        return (s + 1) / warmup if s < warmup else (1 - (s - warmup) / (total - warmup)) ** 0.9

    assert lr_factor("warmup-cosine", step, warmup, total) == pytest.approx(cosine(step))
    assert lr_factor("poly", step, warmup, total) == pytest.approx(poly(step))
    assert lr_factor("constant", step, warmup, total) == pytest.approx(min(1.0, (step + 1) / warmup))


def test_scheduler_drives_optimizer_lr():
    cfg = TrainConfig(lr=0.5, schedule="warmup-cosine", warmup_steps=2, max_steps=6)
    opt = build_optimizer(mlp(0.0), cfg)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.25, 0.5, 0.5, 0.25 * (1 + math.cos(math.pi / 4)), 0.25, 0.25 * (1 + math.cos(3 * math.pi / 4))]
    assert seen == pytest.approx(expected)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # biases are not decayed


@pytest.mark.parametrize("field,value,needle", [
    ("precision", "64", "precision: '64'"), ("device", "tpu", "device: 'tpu'"), ("optimizer", "lamb", "optimizer"),
    ("schedule", "step", "schedule: 'step'"), ("batch_size", 0, "batch_size: 0"), ("lr", -1.0, "lr: -1.0"),
    ("grad_accum", 1.5, "grad_accum: expected an integer"), ("clip_grad", 0.0, "clip_grad: 0.0"),
])
def test_bad_option_values_raise_user_error(field, value, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        TrainConfig(**{field: value}).validate()


def test_indivisible_batch_and_existing_folder(tmp_path):
    with pytest.raises(UserError, match="batch_size 8 is not divisible by world_size 1 x grad_accum 3"):
        fit(base_config(tmp_path / "a", grad_accum=3), ToyTask())
    fit(base_config(tmp_path / "b", max_steps=1, val_every=0), ToyTask())
    with pytest.raises(UserError, match="run folder already exists"):
        fit(base_config(tmp_path / "b", max_steps=1), ToyTask())
    with pytest.raises(UserError, match="fewer than batch_size"):
        fit(base_config(tmp_path / "c", data_args={"n": 4}), ToyTask())


def test_config_from_cli_merges(tmp_path):
    cfg = TrainConfig(task="seg", model="unetr", model_args={"a": 1, "b": 2}, lr=0.1, out="runs/x")
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    merged = config_from_cli("seg", None, {"model_args": {"b": 3}, "lr": None, "max_steps": 7}, tmp_path)
    assert merged.model_args == {"a": 1, "b": 3} and merged.lr == 0.1 and merged.max_steps == 7
    assert merged.out is None and merged.model == "unetr"
    with pytest.raises(UserError, match="config is for task 'seg', not 'video'"):
        config_from_cli("video", None, {}, tmp_path / "config.yaml")
    with pytest.raises(UserError, match="--model is required"):
        config_from_cli("seg", None, {}, None)
    with pytest.raises(UserError, match="unknown config key"):
        (tmp_path / "bad.yaml").write_text("lr: 0.1\nlearning_rate: 2\n")
        config_from_cli("seg", "unetr", {}, tmp_path / "bad.yaml")
    assert parse_key_values(["depth=2", "img_size=[96, 96, 96]", "name=x", "drop_rate=1e-1"]) == {
        "depth": 2, "img_size": [96, 96, 96], "name": "x", "drop_rate": 0.1}
    (tmp_path / "sci.yaml").write_text("task: seg\nmodel: unetr\nlr: 1e-4\nclip_grad: 1e0\n")
    sci = config_from_cli("seg", None, {}, tmp_path / "sci.yaml")
    assert sci.lr == 1e-4 and sci.clip_grad == 1.0
    with pytest.raises(UserError, match="--model-arg: expected KEY=VALUE"):
        parse_key_values(["depth"])


def test_sampler_shards_cover_each_global_batch_once():
    n, batch, world, accum = 37, 12, 2, 3
    per_rank = [list(EpochBatchSampler(n, batch, world, r, accum, seed=5, epoch=2)) for r in range(world)]
    single = list(EpochBatchSampler(n, batch, 1, 0, 1, seed=5, epoch=2))
    assert len(single) == n // batch
    for b, full in enumerate(single):
        parts = [idx for r in range(world) for idx in sum(per_rank[r][b * accum:(b + 1) * accum], [])]
        assert sorted(parts) == sorted(full) and len(parts) == batch
    resumed = list(EpochBatchSampler(n, batch, 1, 0, 1, seed=5, epoch=2, start=2))
    assert resumed == single[2:]
    other_epoch = list(EpochBatchSampler(n, batch, 1, 0, 1, seed=5, epoch=3))
    assert other_epoch != single


def test_load_run_errors(tmp_path):
    with pytest.raises(UserError, match="no such run folder or checkpoint"):
        load_run(tmp_path / "missing")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.safetensors: not a readable safetensors checkpoint"):
        load_run(tmp_path / "junk.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoints/best.safetensors or last.safetensors"):
        load_run(tmp_path / "empty")


def test_no_weight_decay_names_are_not_decayed():
    """Parameters a model lists in no_weight_decay() (pos/time embeddings) join the no-decay group, as in timm."""
    import torch
    from torch import nn

    from engine.optim import param_groups

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.time_embed = nn.Parameter(torch.zeros(1, 8, 4))

        def no_weight_decay(self):
            return {"time_embed"}

    net = Net()
    decay, no_decay = param_groups(net, 0.05)
    assert [id(p) for p in decay["params"]] == [id(net.fc.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(net.fc.bias), id(net.time_embed)}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def test_no_weight_decay_walks_submodules():
    """A backbone's no_weight_decay() names count inside a wrapper (UNETR's ViT: vit.pos_embed), prefixed."""
    import medvit
    from engine.optim import no_weight_decay_names, param_groups

    model = medvit.create_model("unetr", **medvit.registry.tiny_overrides("unetr"))
    names = no_weight_decay_names(model)
    assert "vit.pos_embed" in names and "pos_embed" not in names
    params = dict(model.named_parameters())
    decay, no_decay = param_groups(model, 0.05)
    assert any(p is params["vit.pos_embed"] for p in no_decay["params"])
    assert not any(p is params["vit.pos_embed"] for p in decay["params"])


def test_optimizer_is_fused_on_cpu_and_makes_the_loop_s_update():
    """``build_optimizer`` takes torch's fused kernel for CPU parameters; its AdamW and SGD updates equal torch's
    default per-parameter loop (the implementation before issue 14) to float rounding."""
    from engine.optim import fast_impl

    for name in ("adamw", "sgd"):
        cfg = TrainConfig(lr=0.05, optimizer=name, weight_decay=0.1)
        torch.manual_seed(0)
        fast, loop = mlp(0.0), mlp(0.0)
        loop.load_state_dict(fast.state_dict())
        start = [p.detach().clone() for p in fast.parameters()]
        opts = [build_optimizer(fast, cfg), build_optimizer(loop, cfg, fast=False)]
        assert opts[0].param_groups[0]["fused"] is True and not opts[1].param_groups[0].get("fused")
        x = torch.randn(8, fast[0].in_features)
        for _ in range(3):
            for model, opt in zip((fast, loop), opts):
                opt.zero_grad()
                model(x).pow(2).mean().backward()
                opt.step()
        moved = max(float((p.detach() - q).abs().max()) for p, q in zip(fast.parameters(), start))
        assert moved > 1e-3  # the steps did something
        for p, q in zip(fast.parameters(), loop.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert fast_impl([torch.nn.Parameter(torch.zeros(2, device="meta"))]) == {}  # no fused kernel there
    assert fast_impl([]) == {}

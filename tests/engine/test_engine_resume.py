"""Exact resume, checkpoint atomicity, NaN handling and config replay of engine.fit."""

import os
import signal

import pytest
import torch

from engine import RunError, TrainConfig, config_from_cli, fit, load_run
from engine import checkpoint as ckpt
from engine.metrics import read_metrics
from engine_tasks import ToyTask, base_config, train_losses

__all__: list = []

N_STEPS, STOP_AT = 12, 7  # 5 steps per epoch: the stop lands mid-epoch 1


def _assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=f"weights differ at {k}")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    fit(base_config(out, max_steps=N_STEPS), ToyTask())
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_replays_exactly(full_run, tmp_path, num_workers):
    out = tmp_path / "run"
    cfg = base_config(out, max_steps=N_STEPS, num_workers=num_workers)
    first = fit(cfg, ToyTask(), should_stop=lambda step: step == STOP_AT)
    assert first.stopped and first.step == STOP_AT
    task = ToyTask()
    resumed = fit(base_config(out, max_steps=N_STEPS, num_workers=num_workers, resume=str(out)), task)
    assert resumed.step == N_STEPS and not resumed.stopped
    want, got = train_losses(full_run), train_losses(out)
    assert sorted(got) == list(range(1, N_STEPS + 1))  # stale lines dropped, nothing duplicated
    for step in range(STOP_AT + 1, N_STEPS + 1):
        assert got[step] == pytest.approx(want[step], abs=1e-6, rel=0), f"step {step}"
    _assert_same_weights(load_run(out, "last")[1], load_run(full_run, "last")[1], atol=1e-6)
    if num_workers == 0:  # consumed batches are skipped by index arithmetic, never loaded
        assert len(task.train_ds.fetched) == (N_STEPS - STOP_AT) * cfg.batch_size


def test_state_file_loads_weights_only(full_run):
    state = torch.load(full_run / "checkpoints" / "last.state.pt", weights_only=True)
    assert state["step"] == N_STEPS and state["epoch"] == N_STEPS // 5
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)
    meta = ckpt.read_metadata(full_run / "checkpoints" / "last.safetensors")
    assert (meta["task"], meta["model"], meta["step"]) == ("toy", "mlp", str(N_STEPS))


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = ckpt._write_bytes

    def flaky(f, data, chunk=1 << 26):
        calls["n"] += 1
        if calls["n"] == 3:  # the weights of the step-10 save: write half of it, then fail
            f.write(data[: len(data) // 2])
            raise OSError("disk full (injected)")
        real(f, data, chunk)

    monkeypatch.setattr(ckpt, "_write_bytes", flaky)
    with pytest.raises(OSError, match="injected"):
        fit(base_config(out, max_steps=N_STEPS, val_every=0, ckpt_every=5), ToyTask())
    folder = out / "checkpoints"
    assert sorted(os.listdir(folder)) == ["last.safetensors", "last.state.pt"]  # no temp file left
    assert ckpt.read_metadata(folder / "last.safetensors")["step"] == "5"
    assert ckpt.load_state(folder / "last.state.pt")["step"] == 5
    monkeypatch.setattr(ckpt, "_write_bytes", real)
    resumed = fit(base_config(out, max_steps=N_STEPS, val_every=0, ckpt_every=5, resume=str(out)), ToyTask())
    assert resumed.step == N_STEPS


def test_atomic_write_unit(tmp_path):
    target = tmp_path / "f.bin"
    ckpt.atomic_write(target, lambda f: f.write(b"old"))

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("serializer failed")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(target, boom)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_nan_loss_stops_and_keeps_last_good(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match=r"non-finite loss \(nan\) at step 7; last good checkpoint: .*last\.safetensors"):
        fit(base_config(out, max_steps=N_STEPS, val_every=0, ckpt_every=5), ToyTask(nan_at=7))
    assert ckpt.read_metadata(out / "checkpoints" / "last.safetensors")["step"] == "5"
    assert ckpt.load_state(out / "checkpoints" / "last.state.pt")["step"] == 5
    assert all(torch.isfinite(v).all() for v in load_run(out)[1].values())
    assert max(train_losses(out)) == 6


def test_config_yaml_replays(full_run, tmp_path):
    saved = TrainConfig.from_yaml(full_run / "config.yaml")
    expected = base_config(full_run, max_steps=N_STEPS).validate()
    assert saved == expected
    replay = config_from_cli("toy", None, {"out": str(tmp_path / "replay"), "lr": None}, full_run / "config.yaml")
    assert replay.lr == saved.lr and replay.out == str(tmp_path / "replay") and replay.resume is None
    fit(replay, ToyTask())
    assert train_losses(tmp_path / "replay") == train_losses(full_run)
    cfg, _ = load_run(full_run / "checkpoints" / "best.safetensors")
    assert cfg == saved  # a checkpoint file alone carries its config
    best = read_metrics(full_run)
    val = [r["val/mse"] for r in best if "val/mse" in r]
    assert ckpt.load_state(full_run / "checkpoints" / "best.state.pt")["best"]["value"] == pytest.approx(min(val))


def test_sigterm_stops_after_the_step_and_saves_last(tmp_path):
    def send_sigterm(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # lands while step 3 is finishing; the run stops after step 4
        return False

    before = signal.getsignal(signal.SIGTERM)
    result = fit(base_config(tmp_path / "run", max_steps=N_STEPS), ToyTask(), should_stop=send_sigterm)
    assert result.stopped and result.step == 4
    assert ckpt.load_state(tmp_path / "run" / "checkpoints" / "last.state.pt")["step"] == 4
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is removed again

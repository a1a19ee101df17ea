"""Faults the engine must survive: interrupted checkpoint saves, concurrent runs, failed starts, signals,
validation failures, empty validation shards under torchrun. Every fault is really injected."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import checkpoint as ckpt
from engine import fit
from engine.context import resolve_precision
from engine.errors import Interrupted, RunError, UserError
from engine.lock import RunLock
from engine.loop import raise_if_interrupted
from engine_tasks import ToyTask, base_config

ROOT = Path(__file__).resolve().parents[2]


def _pair_steps(folder: Path, name: str = "last"):
    w, s = ckpt.checkpoint_paths(folder, name)
    return int(ckpt.read_metadata(w)["step"]), int(ckpt.load_state(s)["step"])


def test_crash_between_the_two_renames_is_rolled_forward(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(base_config(out, max_steps=5, val_every=0, ckpt_every=5), ToyTask())
    real_replace, calls = os.replace, []

    def crash_on_state(src, dst):  # the weights rename of the step-10 save lands, the state rename never does
        calls.append(str(dst))
        if str(dst).endswith("last.state.pt") and len([c for c in calls if c.endswith("last.state.pt")]) == 1:
            raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_state)
    with pytest.raises(KeyboardInterrupt):
        fit(base_config(out, max_steps=10, val_every=0, ckpt_every=5, resume=str(out)), ToyTask())
    monkeypatch.setattr(os, "replace", real_replace)
    folder = out / "checkpoints"
    w_step = int(ckpt.read_metadata(folder / "last.safetensors")["step"])
    assert w_step == 10 and ckpt.load_state(folder / "last.state.pt")["step"] == 5  # torn pair on disk
    assert list(folder.glob(".last.commit.json"))  # ... but the journal says how to finish it
    result = fit(base_config(out, max_steps=12, val_every=0, ckpt_every=5, resume=str(out)), ToyTask())
    assert result.step == 12 and _pair_steps(folder) == (12, 12)
    assert not list(folder.glob(".*"))  # journal and temporaries gone


def test_crash_before_the_commit_point_keeps_the_old_pair(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(base_config(out, max_steps=5, val_every=0, ckpt_every=5), ToyTask())
    real = ckpt.atomic_write_text

    def journal_fails(path, text):  # both files are written in full, then writing the commit journal fails
        if Path(path).name.endswith(".commit.json"):
            raise OSError("disk full")
        return real(path, text)

    monkeypatch.setattr(ckpt, "atomic_write_text", journal_fails)
    with pytest.raises(OSError, match="disk full"):
        fit(base_config(out, max_steps=10, val_every=0, ckpt_every=5, resume=str(out)), ToyTask())
    monkeypatch.undo()
    folder = out / "checkpoints"
    assert _pair_steps(folder) == (5, 5) and not list(folder.glob(".*.pending"))


def test_a_locked_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    fit(base_config(out, max_steps=2, val_every=0), ToyTask())
    with RunLock(out):  # another process training into it
        with pytest.raises(UserError, match="in use by another vtk process"):
            fit(base_config(out, max_steps=4, val_every=0, resume=str(out)), ToyTask())
    assert fit(base_config(out, max_steps=4, val_every=0, resume=str(out)), ToyTask()).step == 4


class _FailingData(ToyTask):
    def build_datasets(self, cfg):
        raise UserError("data/x.nii.gz: truncated file")


def test_a_failed_start_leaves_a_reusable_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="truncated"):
        fit(base_config(out), _FailingData())
    assert (out / "config.yaml").is_file()
    with pytest.raises(UserError, match="no checkpoint to resume from yet"):
        fit(base_config(out, resume=str(out)), ToyTask())
    (out / ".metrics.jsonl.abc.tmp").write_text("stale")
    assert fit(base_config(out, max_steps=3, val_every=0), ToyTask()).step == 3  # same --out works again
    assert not (out / ".metrics.jsonl.abc.tmp").exists()  # stale temporaries cleaned at start


def test_out_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="existing file"):
        fit(base_config(tmp_path / "f"), ToyTask())


class _ValFails(ToyTask):
    def validate(self, model, dataset, ctx):
        if ctx.step == 5:
            raise RunError("validation exploded")
        return super().validate(model, dataset, ctx)


def test_checkpoint_is_saved_before_validation(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match="exploded"):
        fit(base_config(out, max_steps=10, val_every=5, ckpt_every=5), _ValFails())
    assert _pair_steps(out / "checkpoints") == (5, 5)
    assert fit(base_config(out, max_steps=10, resume=str(out)), ToyTask()).step == 10


def test_best_has_no_optimizer_state_and_snapshots_are_pruned(tmp_path):
    out = tmp_path / "run"
    fit(base_config(out, max_steps=12, val_every=3, ckpt_every=3, keep_checkpoints=2), ToyTask())
    best = ckpt.load_state(out / "checkpoints" / "best.state.pt")
    assert "optimizer" not in best and best["best"]["value"] is not None
    assert "optimizer" in ckpt.load_state(out / "checkpoints" / "last.state.pt")
    snaps = sorted(p.name for p in (out / "checkpoints").glob("step-*.safetensors"))
    assert snaps == ["step-0000009.safetensors", "step-0000012.safetensors"]


def test_sigterm_exits_143_after_saving(tmp_path):
    out = tmp_path / "run"

    class Kill(ToyTask):
        def training_step(self, model, batch, ctx):
            if ctx.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().training_step(model, batch, ctx)

    result = fit(base_config(out, max_steps=10, val_every=0), Kill())
    assert result.signal == signal.SIGTERM and _pair_steps(out / "checkpoints") == (3, 3)
    with pytest.raises(Interrupted, match="stopped by SIGTERM at step 3") as e:
        raise_if_interrupted(result)
    assert e.value.exit_code == 143


@pytest.mark.parametrize("bf16,fp16", [(False, False), (True, False), (True, True)])
def test_emulated_precision_warns_once_and_native_is_silent(monkeypatch, bf16, fp16):
    import warnings

    from engine import context
    from engine.context import PrecisionWarning, autocast_for

    monkeypatch.setattr(context, "cpu_has_native_bf16", lambda: bf16)
    monkeypatch.setattr(context, "cpu_has_native_fp16", lambda: fp16)
    cpu = torch.device("cpu")
    for precision, native, text in [("bf16", bf16, "--precision bf16: this CPU has no native bf16 (no avx512_bf16"),
                                    ("16-mixed", fp16, "--precision 16: this CPU has no native fp16")]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("default")
            for _ in range(3):  # the engine resolves once per step: one line, not one per step
                assert resolve_precision(precision, cpu) == precision
                with autocast_for(precision, cpu):
                    pass
        lines = [str(w.message) for w in seen if issubclass(w.category, PrecisionWarning)]
        assert len(lines) == (0 if native else 1) and all(line.startswith(text) for line in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        assert resolve_precision("auto", cpu) == ("bf16" if bf16 else "32")  # auto never picks an emulated one
        assert resolve_precision("32", cpu) == "32"
        assert context.emulation_note("bf16", torch.device("cuda")) is None


def test_precision_auto_follows_the_hardware():
    cpu = torch.device("cpu")
    flags = open("/proc/cpuinfo").read().split()
    assert resolve_precision("auto", cpu) == ("bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else "32")
    assert resolve_precision("32", cpu) == "32" and resolve_precision("bf16", cpu) == "bf16"


@pytest.mark.parametrize("n_val", [1, 3])
def test_torchrun_with_fewer_validation_samples_than_ranks_never_hangs(tmp_path, n_val):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                                        os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("ddp_faults.py")), str(tmp_path / "run"), str(n_val)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"run-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank got the same reduced metrics
    mse = ranks[0]["val/mse"]
    assert mse == mse and mse > 0  # a finite mean over the samples that exist (not nan)

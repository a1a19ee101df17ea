"""DDP through torchrun (2 CPU ranks, gloo) equals one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import fit, load_run
from engine.metrics import read_metrics
from engine_tasks import ToyTask, base_config, train_losses

__all__: list = []

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_train.py")
# Dropout masks are per-rank random streams, so equivalence is checked without dropout; augmentation noise
# stays on (it is seeded per sample, independent of the rank).
OVERRIDES = {"model_args": {"dropout": 0.0}, "max_steps": 6, "val_every": 3, "ckpt_every": 3,
             "precision": "32"}  # DDP equals one process up to fp32 rounding; bf16 autocast rounds per shard


def _torchrun(runs: list, nproc: int = 2) -> subprocess.Popen:
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])  # + engine_tasks
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(SCRIPT), json.dumps(runs)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _val(run: Path) -> list:
    return [r["val/mse"] for r in read_metrics(run) if "val/mse" in r]


def test_ddp_two_ranks_equal_single_process_and_resume_exactly(tmp_path):
    runs = {accum: tmp_path / f"ddp-accum{accum}" for accum in (1, 2)}
    jobs = [[str(out), dict(OVERRIDES, grad_accum=accum), None] for accum, out in runs.items()]
    # exact resume under DDP, with dropout: every rank's RNG stream must be restored
    dropout = dict(OVERRIDES, model_args={"dropout": 0.3})
    full, part = tmp_path / "ddp-full", tmp_path / "ddp-part"
    jobs += [[str(full), dropout, None], [str(part), dropout, 4], [str(part), dict(dropout, resume=str(part)), None]]
    proc = _torchrun(jobs)
    try:
        single = tmp_path / "single"  # the reference run trains while torchrun starts up
        fit(base_config(single, **OVERRIDES), ToyTask())
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output[-4000:]
    _, w_one = load_run(single, "last")
    want = train_losses(single)
    for accum, ddp in runs.items():
        _, w_ddp = load_run(ddp, "last")
        for k in w_one:
            diff = (w_ddp[k] - w_one[k]).abs().max().item()
            assert diff < 1e-5, f"grad_accum={accum}: {k} differs by {diff} between DDP and one process"
        got = train_losses(ddp)
        assert sorted(got) == sorted(want)
        for step in want:
            assert got[step] == pytest.approx(want[step], abs=1e-5), f"grad_accum={accum}: loss at step {step}"
        assert _val(ddp) == pytest.approx(_val(single), abs=1e-5)
        assert sorted(os.listdir(ddp / "checkpoints")) == sorted(os.listdir(single / "checkpoints"))
    assert train_losses(part) == pytest.approx(train_losses(full), abs=1e-6, rel=0)
    w_full, w_part = load_run(full, "last")[1], load_run(part, "last")[1]
    assert all((w_full[k] - w_part[k]).abs().max().item() < 1e-6 for k in w_full)

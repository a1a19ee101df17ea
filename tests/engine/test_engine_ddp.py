"""DDP through torchrun (2 CPU ranks, gloo) equals one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engine import fit, load_run  # noqa: E402
from engine.metrics import read_metrics  # noqa: E402
from engine_tasks import ToyTask, base_config, train_losses  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_train.py")
# Dropout masks are per-rank random streams, so equivalence is checked without dropout; augmentation noise
# stays on (it is seeded per sample, independent of the rank).
OVERRIDES = {"model_args": {"dropout": 0.0}, "max_steps": 6, "val_every": 3, "ckpt_every": 3}


def _torchrun(runs: list, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(SCRIPT), json.dumps(runs)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _val(run: Path) -> list:
    return [r["val/mse"] for r in read_metrics(run) if "val/mse" in r]


def test_ddp_two_ranks_equal_single_process(tmp_path):
    single = tmp_path / "single"
    fit(base_config(single, **OVERRIDES), ToyTask())
    runs = {accum: tmp_path / f"ddp-accum{accum}" for accum in (1, 2)}
    proc = _torchrun([[str(out), dict(OVERRIDES, grad_accum=accum)] for accum, out in runs.items()])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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

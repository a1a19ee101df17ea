"""A scheduler's SIGTERM ends `vtk seg train` with exit 143 after saving, and the run resumes (issue 11)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from cli.main import main

ROOT = Path(__file__).resolve().parents[2]
_TINY_UNETR = ["--img-size", "16", "--feature-size", "4", "--model-arg", "embed_dim=32", "--model-arg", "depth=2",
               "--model-arg", "num_heads=2", "--model-arg", "patch_size=8", "--data-arg", "spacing=[12,12,12]",
               "--num-samples", "1", "--batch-size", "1", "--device", "cpu", "--num-workers", "0",
               "--val-every", "0"]


def test_sigterm_during_seg_train_exits_143_after_saving(tmp_path):
    data, run = tmp_path / "btcv", tmp_path / "run"
    assert main(["data", "synth", "btcv", "--out", str(data), "--cases", "3", "--size", "24"]) == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "cli.main", "seg", "train", "--model", "unetr", "--data", "btcv", "--data-dir",
           str(data), "--out", str(run), "--max-steps", "100000", "--ckpt-every", "100000", *_TINY_UNETR]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the first step line: training is under way, nothing saved yet
            if line.startswith("step 10/"):
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    lines = [x for x in err.splitlines() if x.startswith("vtk: error:")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--resume" in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert (run / "checkpoints" / "last.safetensors").is_file()  # saved before exiting
    step = int(re.search(r"at step (\d+)", lines[0]).group(1))
    assert main(["seg", "train", "--resume", str(run), "--max-steps", str(step + 1), "--quiet"]) == 0

"""`vtk seg train` under torchrun, end to end: 2 CPU ranks (gloo), a synthetic BTCV with ONE validation case (fewer
cases than ranks, so rank 1 validates nothing), and the recipe's batch (1 volume) without --batch-size: the run must
neither hang nor fail, and must write its validation metrics and checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_UNETR = ["--img-size", "16", "--feature-size", "4", "--model-arg", "embed_dim=32", "--model-arg", "depth=2",
              "--model-arg", "num_heads=2", "--model-arg", "patch_size=8", "--data-arg", "spacing=[12,12,12]",
              "--num-samples", "1"]


def test_torchrun_seg_train_with_one_validation_case(tmp_path):
    from medvit.data.synth import synth_btcv

    data = tmp_path / "btcv"
    synth_btcv(data, cases=3, size=24, seed=0, test_cases=0)
    meta = json.loads((data / "dataset_0.json").read_text())
    assert len(meta["validation"]) == 1 and len(meta["training"]) == 2  # fewer validation cases than ranks
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cli.main",
           "seg", "train", "--model", "unetr", "--data", "btcv", "--data-dir", str(data), "--out", str(run),
           "--max-steps", "1", "--val-every", "1", "--device", "cpu", "--num-workers", "0", "--quiet",
           "--precision", "32", *TINY_UNETR]  # no --batch-size: the recipe's 1 volume becomes 1 per rank
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "batch_size: 2" in (run / "config.yaml").read_text()  # the global batch, for 2 ranks
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/dice" in r]
    assert len(val) == 1 and val[0]["step"] == 1 and 0.0 <= val[0]["val/dice"] <= 1.0
    assert (run / "checkpoints/last.safetensors").is_file() and (run / "checkpoints/best.safetensors").is_file()

"""`vtk video train` under `torchrun --nproc_per_node 2`, end to end on synthetic videos (CPU, gloo).

The validation split is smaller than the world (one video for two ranks: rank 1's shard is empty) or holds an
unreadable video; both must finish with exit 0 and the same reduced metrics, never hang. A global batch the world
cannot split is refused with one line naming it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from video_faults import truncate_faststart

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--num-frames", "4", "--img-size", "32", "--patch-size", "8", "--model-arg", "embed_dim=16",
        "--model-arg", "depth=1", "--model-arg", "num_heads=2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "k400"
    assert main(["data", "synth", "kinetics400", "--out", str(out), "--classes", "2", "--videos-per-class", "4",
                 "--frames", "8", "--size", "32", "--seed", "3", "--no-annotations"]) == 0
    return out


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _torchrun(data_dir: Path, out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cli.main",
           "video", "train", "--model", "timesformer", "--data", "kinetics400", "--data-dir", str(data_dir),
           "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--val-every", "1", "--num-workers", "0",
           "--device", "cpu", "--precision", "32", "--quiet", *TINY, *extra]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _val_records(run: Path):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "val/top1" in r]


def _with_val_lines(synth: Path, dst: Path, lines) -> Path:
    """A copy of ``synth`` (files linked) whose ``val.csv`` holds ``lines``."""
    dst.mkdir()
    for item in synth.iterdir():
        (dst / item.name).symlink_to(item, target_is_directory=item.is_dir())
    (dst / "val.csv").unlink()
    (dst / "val.csv").write_text("".join(f"{line}\n" for line in lines))
    return dst


def test_one_validation_video_for_two_ranks(synth, tmp_path):
    one = (synth / "val.csv").read_text().splitlines()[:1]
    data = _with_val_lines(synth, tmp_path / "data", one)
    cpu0 = _children_cpu_s()
    proc = _torchrun(data, tmp_path / "run")
    cpu = _children_cpu_s() - cpu0  # CPU seconds of torchrun and both ranks: wall time depends on the machine's load
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    val = _val_records(tmp_path / "run")
    assert [r["step"] for r in val] == [1, 2] and all(r["val/skipped"] == 0 for r in val)
    assert all(r["val/top1"] in (0.0, 1.0) for r in val)  # one video: the mean over it is 0 or 1, never nan
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
    assert cpu < 60, f"torchrun and its two ranks used {cpu:.0f} CPU seconds"


def test_unreadable_validation_video_is_skipped_on_its_rank(synth, tmp_path):
    lines = (synth / "val.csv").read_text().splitlines()[:2]
    broken = tmp_path / "broken.mp4"
    truncate_faststart(synth / lines[1].rsplit(" ", 1)[0], broken)  # rank 1's video: index says 8, file holds 4
    data = _with_val_lines(synth, tmp_path / "data", [lines[0], f"{broken} {lines[1].rsplit(' ', 1)[1]}"])
    proc = _torchrun(data, tmp_path / "run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "validation skips an unreadable video" in line]
    assert len(warnings) == 1 and "broken.mp4: truncated video" in warnings[0]  # once, not at every validation
    val = _val_records(tmp_path / "run")
    assert [r["val/skipped"] for r in val] == [1.0, 1.0]  # summed over ranks
    assert all(r["val/top1"] in (0.0, 1.0) for r in val)  # the readable video alone


def test_global_batch_the_world_cannot_split_is_one_line(synth, tmp_path):
    proc = _torchrun(synth, tmp_path / "run", "--batch-size", "3")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vtk: error:")]
    assert lines and "batch_size 3 is not divisible by world_size 2" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()

"""Sharded ``vtk seg predict`` under torchrun: each rank takes its share of the inputs, the union of the ranks'
outputs equals the single-process outputs, and no file is written twice (every write is logged per rank).

Run as a script, this file is the torchrun worker: ``python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/medvit/test_ddp_predict.py CKPT INPUT OUT LOGDIR``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _inputs(folder: Path, n: int = 5):
    from medvit.io import write_nifti

    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (20 + 2 * i, 18, 12)
        write_nifti(folder / f"case{i}.nii.gz", (rng.random(shape) * 255).astype(np.float32),
                    np.diag([-3.0, 3.0, 3.0, 1.0]))


def _args(ckpt, inp, out):
    return ["seg", "predict", "--checkpoint", str(ckpt), "--input", str(inp), "--out", str(out), "--device", "cpu",
            "--no-overlay", "--save-probabilities", "npz", "--tta"]


@pytest.mark.usefixtures("tiny_seg_models")
def test_torchrun_shards_the_inputs_and_writes_each_file_once(tmp_path):
    from cli.main import main

    spec = importlib.util.spec_from_file_location("medvit_test_formats", Path(__file__).with_name("test_formats.py"))
    formats_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(formats_tests)
    _checkpoint = formats_tests._checkpoint

    ckpt = _checkpoint(tmp_path / "model.safetensors")
    inp = tmp_path / "in"
    _inputs(inp)
    assert main(_args(ckpt, inp, tmp_path / "single")) == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(ckpt), str(inp), str(tmp_path / "sharded"), str(logs)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0/2: 3 of 5 input(s)" in proc.stdout and "rank 1/2: 2 of 5 input(s)" in proc.stdout

    written = {r: [Path(p).name for p in (logs / f"rank{r}.txt").read_text().split()] for r in (0, 1)}
    every = written[0] + written[1]
    assert len(every) == len(set(every)), written  # nothing written twice, by one rank or by both
    assert written[0] and written[1] and not set(written[0]) & set(written[1])
    single = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert sorted(every) == single == sorted(p.name for p in (tmp_path / "sharded").iterdir())
    for name in single:
        a, b = tmp_path / "single" / name, tmp_path / "sharded" / name
        if name.endswith(".nii.gz"):
            np.testing.assert_array_equal(np.asarray(nib.load(str(a)).dataobj), np.asarray(nib.load(str(b)).dataobj))
        else:
            np.testing.assert_allclose(np.load(a)["probabilities"].astype(np.float32),
                                       np.load(b)["probabilities"].astype(np.float32), atol=2e-3)


def _worker(ckpt, inp, out, logdir) -> int:
    """One torchrun rank: log every atomic write of this process, then run the CLI."""
    import engine.io
    import medvit
    from cli.main import main
    from vtk_testing import registered

    spec = importlib.util.spec_from_file_location("medvit_test_models", Path(__file__).with_name("conftest.py"))
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)  # tiny_seg3d, by path (several test folders have a conftest.py)

    rank = int(os.environ["RANK"])
    Path(logdir).mkdir(parents=True, exist_ok=True)
    log = Path(logdir) / f"rank{rank}.txt"
    real = engine.io.atomic_write

    def logged(path, write, **kw):
        with open(log, "a") as f:
            f.write(f"{path}\n")
        return real(path, write, **kw)

    engine.io.atomic_write = logged
    with registered(medvit.registry, models.tiny_seg3d, meta=dict(spatial_dims=3)):
        rc = main(_args(ckpt, inp, out))
    print(json.dumps({"rank": rank, "rc": rc}))
    return rc


if __name__ == "__main__":
    sys.exit(_worker(*sys.argv[1:5]))

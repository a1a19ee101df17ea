"""Distributed ``vtk video eval|predict`` under torchrun (2 CPU ranks, gloo), saved predictions and ``vtk video score``.

The synthetic split has 3 val videos, so the two ranks get uneven shards (2 and 1); predicting one file on two ranks
leaves rank 1 with no video at all. Every file rank 0 writes must equal the one a single process writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from vtk_testing import tiny_video_run

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import sys
from cli.main import main
argvs = [a.split("\\x1f") for a in sys.argv[1:]]
sys.exit(max(main(argv) for argv in argvs))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run, _ = tiny_video_run(tmp_path_factory.mktemp("dist"), videos_per_class=4, seed=1, steps=2, batch_size=4)
    return run


def _eval_args(run: Path, out: Path, npz: Path):
    return ["video", "eval", "--checkpoint", str(run), "--views", "2x3", "--out", str(out), "--num-workers", "0",
            "--batch-size", "2", "--device", "cpu", "--save-predictions", str(npz)]


def _predict_args(run: Path, input: Path, out: Path, npz: Path):
    return ["video", "predict", "--checkpoint", str(run), "--input", str(input), "--out", str(out), "--views",
            "2x3", "--device", "cpu", "--save-predictions", str(npz)]


def _torchrun(tmp_path: Path, *argvs) -> subprocess.CompletedProcess:
    script = tmp_path / "vtk_many.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           *("\x1f".join(a) for a in argvs)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outputs(run_dir, tmp_path_factory):
    """Single-process and torchrun outputs of eval (3 videos), predict (3 files) and predict (1 file)."""
    root = tmp_path_factory.mktemp("outs")
    val = sorted((run_dir.parent / "k400" / "val").rglob("*.mp4"))
    assert len(val) == 3
    one = root / "one"
    one.mkdir()
    (one / val[0].name).write_bytes(val[0].read_bytes())
    jobs = {}
    for mode in ("single", "dist"):
        d = root / mode
        jobs[mode] = [_eval_args(run_dir, d / "eval", d / "eval.npz"),
                      _predict_args(run_dir, val[0].parent.parent, d / "pred", d / "pred.npz"),
                      _predict_args(run_dir, one, d / "pred1", d / "pred1.npz")]
    for argv in jobs["single"]:
        assert main(argv) == 0
    proc = _torchrun(root, *jobs["dist"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


def _json(path: Path):
    return json.loads(path.read_text())


def test_torchrun_eval_metrics_equal_single_process(outputs):
    root, proc = outputs
    single, dist = _json(root / "single/eval/metrics.json"), _json(root / "dist/eval/metrics.json")
    assert single["videos"] == 3 and dist == single
    assert (root / "dist/eval/confusion.png").stat().st_size > 1000
    assert "eval val: 2/2 videos" in proc.stderr  # rank 0's progress line (its uneven share: 2 of 3)


def test_torchrun_predict_equals_single_process(outputs):
    root, _ = outputs
    for name in ("pred", "pred1"):  # 3 files (shards 2 and 1) and 1 file (rank 1 has none)
        single = json.loads((root / f"single/{name}/predictions.json").read_text().replace("/single/", "/dist/"))
        dist = _json(root / f"dist/{name}/predictions.json")
        assert dist == single and len(single["predictions"]) == (3 if name == "pred" else 1)
        for sheet in dist["contact_sheets"].values():
            assert Path(sheet).is_file()


def test_saved_predictions_keep_every_view(outputs, run_dir):
    from videovit.score import load_predictions

    root, _ = outputs
    single, dist = load_predictions(root / "single/eval.npz"), load_predictions(root / "dist/eval.npz")
    assert single.view_probs.shape == (3, 6, 3) and single.videos == dist.videos
    np.testing.assert_allclose(dist.view_probs, single.view_probs, atol=1e-6)
    np.testing.assert_allclose(single.view_probs.sum(-1), 1.0, atol=1e-5)
    assert len({tuple(v.round(6).ravel()) for v in single.view_probs[0]}) > 1  # the views really differ
    # the mean of the saved views is the eval's video prediction: its argmax is the confusion matrix's column
    confusion = np.zeros((3, 3), int)
    for y, p in zip(single.labels, single.view_probs.mean(1)):
        confusion[y, p.argmax()] += 1
    assert confusion.tolist() == _json(root / "single/eval/metrics.json")["confusion"]
    pred = load_predictions(root / "dist/pred.npz")
    assert (pred.labels == -1).all() and pred.view_probs.shape == (3, 6, 3)


def test_score_equals_eval_and_late_fusion(outputs, tmp_path, capsys):
    from videovit.score import load_predictions, save_predictions

    root, _ = outputs
    assert main(["video", "score", str(root / "single/eval.npz"), "--out", str(tmp_path / "s")]) == 0
    assert _json(tmp_path / "s/metrics.json") == _json(root / "single/eval/metrics.json")
    # late fusion with a second "model" whose views all vote for class 0: the average flips some videos to class 0
    saved = load_predictions(root / "single/eval.npz")
    other = np.zeros_like(saved.view_probs)
    other[..., 0] = 1.0
    save_predictions(tmp_path / "b.npz", saved.videos, other, saved.labels, saved.classes, **saved.meta)
    assert main(["video", "score", str(root / "single/eval.npz"), str(tmp_path / "b.npz"), "--out",
                 str(tmp_path / "f")]) == 0
    fused = (torch.from_numpy(saved.view_probs).mean(1) + torch.from_numpy(other).mean(1)) / 2
    pred = fused.argmax(-1).numpy()
    m = _json(tmp_path / "f/metrics.json")
    assert m["top1"] == pytest.approx(float((pred == saved.labels).mean()))
    assert sum(row[0] for row in m["confusion"]) == int((pred == 0).sum())


def test_score_bad_input_one_line(outputs, tmp_path, capsys):
    from videovit.score import load_predictions, save_predictions

    root, _ = outputs
    saved = load_predictions(root / "single/eval.npz")
    save_predictions(tmp_path / "two.npz", saved.videos[:2], saved.view_probs[:2], saved.labels[:2], saved.classes,
                     **saved.meta)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    capsys.readouterr()
    for argv, needle in (([str(root / "single/eval.npz"), str(tmp_path / "two.npz")], "two.npz: its 2 videos"),
                         ([str(tmp_path / "junk.npz")], "junk.npz: unreadable predictions file"),
                         ([str(tmp_path / "nope.npz")], "nope.npz: no such predictions file"),
                         ([str(root / "single/pred.npz")], "have no label")):
        assert main(["video", "score", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_shard_covers_every_item_once():
    from videovit.inference import shard

    for n in range(6):
        for world in (1, 2, 3, 4):
            parts = [shard(range(n), r, world) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="rank=2"):
        shard([1], 2, 2)

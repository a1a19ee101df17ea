"""``vtk bench video-eval``: vtk's multi-view eval and the PySlowFast-style decode-per-view loop score the same."""

from __future__ import annotations

import re

from cli.main import main


def test_bench_video_eval_same_predictions(tmp_path, capsys):
    assert main(["bench", "video-eval", "--views", "4by3"]) == 2
    assert main(["bench", "video-eval", "--video-frames", "10"]) == 2  # shorter than one 8x32 clip
    capsys.readouterr()
    rc = main(["bench", "video-eval", "--videos", "2", "--views", "2x3", "--num-frames", "4", "--stride", "3",
               "--crop-size", "32", "--video-frames", "40", "--workers", "0", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    diff = float(re.search(r"max \|p_vtk - p_ref\| (\S+)", out).group(1))
    assert diff < 1e-5  # the same evaluation: same frames, crops and model, only the decoding differs
    assert re.search(r"\| 2x3 \| 4x3 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", out)

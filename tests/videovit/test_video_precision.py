"""``--precision`` of ``vtk video eval/predict``: the network runs under the chosen autocast, probabilities fp32."""

from __future__ import annotations

import pytest
import torch

from cli.main import main
from vtk_testing import tiny_video_run



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_video_run(tmp_path_factory.mktemp("prec"), videos_per_class=2, seed=1, steps=1, batch_size=2,
                          extra=["--precision", "32"])


@pytest.mark.parametrize("precision,dtype", [("32", torch.float32), ("bf16", torch.bfloat16)])
def test_predictor_precision(run, precision, dtype):
    from videovit.inference import Predictor

    out, data = run
    pred = Predictor(out, device="cpu", precision=precision)
    seen = []
    head = [m for m in pred.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    video = sorted((data / "val").glob("*/*.mp4"))[0]
    p = pred.predict_file(video, top_k=2)
    assert p.probs.dtype == torch.float32 and abs(float(p.probs.sum()) - 1) < 1e-5
    ev = pred.evaluate("val", num_workers=0)
    assert ev.probs.dtype == torch.float32 and ev.videos == 3
    assert seen and set(seen) == {dtype}, seen


def test_precision_option_on_the_cli(run, tmp_path, capsys):
    out, data = run
    video = sorted((data / "val").glob("*/*.mp4"))[0]
    assert main(["video", "predict", "--checkpoint", str(out), "--input", str(video), "--out", str(tmp_path / "p"),
                 "--device", "cpu", "--precision", "bf16"]) == 0
    capsys.readouterr()
    assert main(["video", "eval", "--checkpoint", str(out), "--device", "cpu", "--precision", "half"]) == 2
    assert "--precision: 'half' is not one of auto, 32, bf16, 16" in capsys.readouterr().err


def test_eval_and_predict_apply_the_cpu_heap_policy(run, tmp_path, monkeypatch):
    import engine.heap
    from videovit.inference import Predictor

    seen = []
    monkeypatch.setattr(engine.heap, "set_cpu_heap", lambda p: seen.append(p) or True)
    out, data = run
    pred = Predictor(out, device="cpu")
    pred.evaluate("val", num_workers=0)
    pred.evaluate("val", num_workers=0, cpu_heap="system")
    videos = sorted((data / "val").glob("*/*.mp4"))[:1]
    res = pred.predict_all(videos, 1, lambda p: tmp_path / f"{p.stem}.png")
    assert seen == ["retain", "system", "retain"] and len(res.top) == 1

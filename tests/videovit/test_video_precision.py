"""``--precision`` of ``vtk video eval/predict``: the network runs under the chosen autocast, probabilities fp32."""

from __future__ import annotations

import pytest
import torch

from cli.main import main

TINY = ["--num-frames", "4", "--img-size", "32", "--patch-size", "8", "--model-arg", "embed_dim=16",
        "--model-arg", "depth=1", "--model-arg", "num_heads=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prec")
    data = root / "k400"
    assert main(["data", "synth", "kinetics400", "--out", str(data), "--classes", "3", "--videos-per-class", "2",
                 "--frames", "8", "--size", "32", "--seed", "1"]) == 0
    out = root / "run"
    assert main(["video", "train", "--model", "timesformer", "--data", "kinetics400", "--data-dir", str(data),
                 "--out", str(out), "--max-steps", "1", "--batch-size", "2", "--val-every", "1", "--num-workers",
                 "0", "--device", "cpu", "--quiet", "--precision", "32", *TINY]) == 0
    return out, data


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

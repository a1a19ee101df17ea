"""``--precision`` of ``vtk seg predict/eval``: the network runs under the chosen autocast, masks stay equal."""

import nibabel as nib
import numpy as np
import pytest
import torch

from cli.main import main

pytestmark = pytest.mark.usefixtures("tiny_seg_models")  # tests/medvit/conftest.py


@pytest.fixture
def run(tmp_path):
    data = tmp_path / "btcv"
    assert main(["data", "synth", "btcv", "--out", str(data), "--cases", "3", "--size", "24", "--test-cases", "1"]) == 0
    out = tmp_path / "run"
    assert main(["seg", "train", "--model", "tiny_seg3d", "--data", "btcv", "--data-dir", str(data), "--out", str(out),
                 "--max-steps", "2", "--val-every", "2", "--device", "cpu", "--num-workers", "0", "--quiet",
                 "--img-size", "16", "--data-arg", "spacing=[12,12,12]", "--num-samples", "1",
                 "--precision", "32"]) == 0
    return out, data


def _conv_dtypes(pred):
    seen = []
    pred.model.net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_predictor_runs_the_network_in_the_chosen_precision(run):
    from medvit.inference import Predictor
    from medvit.io import read_nifti

    out, data = run
    vol = read_nifti(data / "imagesTs/img0004.nii.gz")
    masks = {}
    for precision, dtype in (("32", torch.float32), ("bf16", torch.bfloat16)):
        pred = Predictor(out, "cpu", 0.25, 2, precision=precision)
        seen = _conv_dtypes(pred)
        masks[precision] = pred.predict_nifti(vol)
        assert seen and set(seen) == {dtype}, (precision, seen)
    assert masks["32"].shape == vol.data.shape
    assert (masks["32"] != masks["bf16"]).mean() <= 0.005


def test_precision_option_reaches_predict_and_rejects_a_bad_value(run, tmp_path, capsys, monkeypatch):
    import engine.context

    monkeypatch.setattr(engine.context, "cpu_has_native_bf16", lambda: False)  # a CPU that emulates bf16
    out, data = run
    pred = tmp_path / "pred"
    args = ["seg", "predict", "--checkpoint", str(out), "--input", str(data / "imagesTs"), "--out", str(pred),
            "--device", "cpu", "--no-overlay"]
    capsys.readouterr()
    assert main(args + ["--precision", "fp32"]) == 0
    assert "warning" not in capsys.readouterr().err
    fp32 = np.asarray(nib.load(str(pred / "img0004_seg.nii.gz")).dataobj)
    assert main(args + ["--precision", "bf16"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == ["vtk: warning: --precision bf16: this CPU has no native bf16 (no avx512_bf16 or AMX), so its "
                      "bf16 matrix multiplies are emulated, many times slower than fp32; --precision auto uses fp32 "
                      "here"]  # one line for the whole run (every sliding window resolves it again)
    bf16 = np.asarray(nib.load(str(pred / "img0004_seg.nii.gz")).dataobj)
    assert (fp32 != bf16).mean() <= 0.005
    assert main(args + ["--precision", "bf61"]) == 2
    err = capsys.readouterr().err
    assert "--precision: 'bf61' is not one of auto, 32, bf16, 16" in err and "Traceback" not in err
    assert main(["seg", "eval", "--checkpoint", str(out), "--device", "cpu", "--precision", "64"]) == 2


@pytest.mark.parametrize("native", [True, False])
def test_amp_is_bf16_on_the_cpu_and_warns_where_bf16_is_emulated(monkeypatch, native):
    import warnings

    import engine.context
    from engine.context import PrecisionWarning
    from medvit.inference import sliding_window_probs

    monkeypatch.setattr(engine.context, "cpu_has_native_bf16", lambda: native)
    seen = []

    def model(x):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype)
        return torch.cat([x, -x], 1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        probs = sliding_window_probs(model, torch.randn(1, 1, 8, 8, 8), (8, 8, 8), amp=True)
    assert seen == [torch.bfloat16] and probs.dtype == torch.float32
    assert len([w for w in caught if issubclass(w.category, PrecisionWarning)]) == (0 if native else 1)

"""``vtk seg predict --model-file`` and ``vtk video predict --model-file``: the exported graph (onnxruntime, or
TorchScript) inside the same pre- and post-processing as the PyTorch path.

Parity: a tiny UNETR run is exported with ``vtk models export`` and both paths predict the shipped Colin27 case
(sliding windows, resampling to the scan's grid); the masks must be equal voxel for voxel. The same for a tiny
TimeSformer and a tiny MViT run on a synthetic clip (2x3 views): the same ranking of every class, scores within
1e-4. The ONNX cases are skipped, with the install line as the reason, only when onnxruntime is missing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from torch import nn

from backbones.runtime import DEPLOY_INSTALL, EXTRA_FILE, load_model_file
from cli.main import main
from engine.errors import UserError
from vtk_testing import perturb_, registered

_HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
_NEEDS_ORT = pytest.mark.skipif(not _HAS_ORT, reason=f"onnxruntime is not installed (the deploy extra: "
                                f"{DEPLOY_INSTALL})")
_FORMATS = [pytest.param("onnx", marks=_NEEDS_ORT), "pt"]
COLIN = Path(__file__).resolve().parents[1] / "medvit" / "assets" / "colin27" / "imagesTr" / "img0001.nii.gz"
SEG_NAMES = ["background", "left cortex", "right cortex", "cerebellum", "deep grey"]


def _save_run(path: Path, cfg, model: nn.Module) -> Path:
    from engine.checkpoint import serialize_weights

    path.write_bytes(serialize_weights(model, cfg, step=1))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("vtk: error: ") and len(err.splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------------------------- segmentation
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """A tiny UNETR 'run' on Colin27's protocol: 3 mm spacing, the T1's 0..255 window, 5 classes."""
    import medvit
    from engine import TrainConfig

    args = {**medvit.registry.tiny_overrides("unetr"), "num_classes": len(SEG_NAMES)}
    cfg = TrainConfig(task="seg", model="unetr", model_args=args, data="decathlon",
                      data_args={"roi": [16, 16, 16], "spacing": [4.5, 4.5, 4.5], "a_min": 0.0, "a_max": 255.0,
                                 "names": SEG_NAMES})
    torch.manual_seed(0)
    model = perturb_(medvit.create_model("unetr", **args), scale=0.2)
    return _save_run(tmp_path_factory.mktemp("seg") / "unetr.safetensors", cfg, model)


def _seg_predict(tmp_path: Path, name: str, *source: str) -> np.ndarray:
    from medvit.io import read_nifti

    out = tmp_path / name
    argv = ["seg", "predict", *source, "--input", str(COLIN), "--out", str(out), "--no-overlay", "--device", "cpu",
            "--precision", "32"]  # the exported graph is fp32: compare with the fp32 PyTorch path
    assert main(argv) == 0, argv
    return np.asarray(read_nifti(out / "img0001_seg.nii.gz").data)


@pytest.mark.parametrize("suffix", _FORMATS)
def test_seg_predict_from_export_equals_pytorch_on_colin27(seg_run: Path, suffix: str, tmp_path: Path,
                                                           one_thread) -> None:
    exported = tmp_path / f"unetr.{suffix}"
    assert main(["models", "export", "--checkpoint", str(seg_run), "--out", str(exported), "--static-spatial"]) == 0
    ref = _seg_predict(tmp_path, "torch", "--checkpoint", str(seg_run))
    got = _seg_predict(tmp_path, "export", "--model-file", str(exported))
    assert ref.shape == (61, 73, 61) and len(np.unique(ref)) >= 3, np.unique(ref)  # a mask worth comparing
    assert got.shape == ref.shape and int((got != ref).sum()) == 0


@pytest.mark.parametrize("suffix", _FORMATS)
def test_seg_eval_from_export_equals_pytorch_on_colin27(seg_run: Path, suffix: str, tmp_path: Path,
                                                        one_thread) -> None:
    """``vtk seg eval --model-file``: the exported graph's Dice, HD95 and NSD per case and organ are the PyTorch
    run's, on the shipped Colin27 cases."""
    exported = tmp_path / f"unetr.{suffix}"
    assert main(["models", "export", "--checkpoint", str(seg_run), "--out", str(exported), "--static-spatial"]) == 0
    common = ["--data", "decathlon", "--data-dir", str(COLIN.parents[1]), "--split", "all", "--device", "cpu",
              "--precision", "32", "--postprocess", "none"]
    assert main(["seg", "eval", "--checkpoint", str(seg_run), "--out", str(tmp_path / "torch"), *common]) == 0
    assert main(["seg", "eval", "--model-file", str(exported), "--out", str(tmp_path / "export"), *common]) == 0
    ref, got = ((tmp_path / d / "per_case.csv").read_text() for d in ("torch", "export"))
    assert len(ref.splitlines()) > 4 and got == ref  # every case and organ, to the digit
    summary = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert summary["checkpoint"] == str(exported) and summary["cases"] >= 1


def test_seg_eval_with_model_file_refuses_other_sources_and_needs_a_dataset(seg_run: Path, tmp_path: Path,
                                                                           capsys) -> None:
    exported = tmp_path / "unetr.pt"
    assert main(["models", "export", "--checkpoint", str(seg_run), "--out", str(exported), "--static-spatial"]) == 0
    capsys.readouterr()
    assert main(["seg", "eval", "--model-file", str(exported), "--checkpoint", str(seg_run)]) == 2
    assert "--checkpoint: not with --model-file" in _one_line_error(capsys)
    assert main(["seg", "eval", "--model-file", str(exported), "--device", "cpu", "--data", "decathlon"]) == 2
    assert "the exported model records no dataset folder; pass --data and --data-dir" in _one_line_error(capsys)


@_NEEDS_ORT
def test_seg_predict_reads_the_protocol_from_the_file(seg_run: Path, tmp_path: Path, one_thread) -> None:
    """The same graph with another intensity window in its metadata gives another mask: the window in the file
    is the one applied (so the parity above is not the network alone)."""
    import onnx

    exported = tmp_path / "unetr.onnx"
    assert main(["models", "export", "--checkpoint", str(seg_run), "--out", str(exported), "--static-spatial"]) == 0
    run = load_model_file(exported, "seg")
    assert run.cfg.data_args["names"] == SEG_NAMES and run.cfg.data_args["spacing"] == [4.5, 4.5, 4.5]
    assert (run.cfg.data_args["a_min"], run.cfg.data_args["a_max"]) == (0.0, 255.0)
    proto = onnx.load(str(exported))
    entry = next(p for p in proto.metadata_props if p.key == "vtk")
    meta = json.loads(entry.value)
    meta["protocol"]["a_max"] = 2000.0
    entry.value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "window.onnx"))
    ref = _seg_predict(tmp_path, "file", "--model-file", str(exported))
    other = _seg_predict(tmp_path, "window", "--model-file", str(tmp_path / "window.onnx"))
    assert int((other != ref).sum()) > 100


# ------------------------------------------------------------------------------------------------------ video
@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from videovit.data.synth import render_video, write_video

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, render_video(1, 24, 48, np.random.default_rng(3)), fps=25)
    return path


_CLASSES = ["left", "right", "up", "down"]


def _video_run(tmp_path: Path, name: str) -> Path:
    import videovit
    from engine import TrainConfig

    args = {**videovit.registry.tiny_overrides(name), "num_classes": len(_CLASSES)}
    torch.manual_seed(0)
    model = perturb_(videovit.create_model(name, **args), scale=0.2)
    frames, crop = int(model.pretrained_cfg["input_size"][1]), int(model.pretrained_cfg["input_size"][-1])
    cfg = TrainConfig(task="video", model=name, model_args=args, data="kinetics400",
                      data_args={"classes": _CLASSES, "num_frames": frames, "stride": 2, "crop_size": crop,
                                 "short_side": crop + 24, "eval_short_side": crop + 8, "val_views": "2x3",
                                 "mean": [0.45, 0.4, 0.35], "std": [0.25, 0.2, 0.22]})
    return _save_run(tmp_path / f"{name}.safetensors", cfg, model)


def _video_predict(tmp_path: Path, clip: Path, name: str, *source: str) -> List[Dict[str, Any]]:
    out = tmp_path / name
    argv = ["video", "predict", *source, "--input", str(clip), "--out", str(out), "--top-k", str(len(_CLASSES)),
            "--device", "cpu", "--precision", "32"]  # the exported graph is fp32
    assert main(argv) == 0, argv
    return json.loads((out / "predictions.json").read_text())["predictions"][str(clip)]


@pytest.mark.parametrize("suffix", _FORMATS)
@pytest.mark.parametrize("name", ["timesformer_base_patch16_224", "mvit_base_16x4"])
def test_video_predict_from_export_equals_pytorch_on_a_clip(name: str, suffix: str, clip: Path, tmp_path: Path,
                                                            one_thread) -> None:
    run = _video_run(tmp_path, name)
    exported = tmp_path / f"{name}.{suffix}"
    assert main(["models", "export", "--checkpoint", str(run), "--out", str(exported), "--static-spatial"]) == 0
    ref = _video_predict(tmp_path, clip, "torch", "--checkpoint", str(run), "--views", "2x3")
    got = _video_predict(tmp_path, clip, "export", "--model-file", str(exported))  # the file's views: 2x3
    assert [t["label"] for t in got] == [t["label"] for t in ref]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, ref)) < 1e-4
    assert ref[0]["score"] - ref[-1]["score"] > 1e-3, ref  # the scores differ: the ranking is a real check
    loaded = load_model_file(exported, "video")
    da = loaded.cfg.data_args
    assert (da["stride"], da["eval_short_side"] - da["crop_size"], da["val_views"]) == (2, 8, "2x3")
    assert da["classes"] == _CLASSES and da["mean"] == [0.45, 0.4, 0.35] and da["std"] == [0.25, 0.2, 0.22]


# -------------------------------------------------------------------------------------------------- bad input
def _plain_onnx(path: Path) -> Path:
    torch.onnx.export(nn.Linear(3, 2), (torch.zeros(1, 3),), str(path), dynamo=False, input_names=["input"],
                      output_names=["output"])
    return path


def _bad_files(tmp_path: Path) -> List[tuple]:
    ts = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(nn.Linear(3, 2), torch.zeros(1, 3)), str(ts))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    state = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, state)
    cases = [(ts, f"plain.pt: not a vtk export: the TorchScript archive has no extra file '{EXTRA_FILE}'"),
             (state, "state.pt: not a TorchScript archive"),
             (tmp_path / "missing.onnx", "missing.onnx: no such file")]
    if _HAS_ORT:
        cases += [(_plain_onnx(tmp_path / "plain.onnx"),
                   "plain.onnx: not a vtk export: its ONNX metadata_props have no 'vtk' entry"),
                  (junk, "junk.onnx: neither an ONNX model nor a TorchScript archive")]
    return cases


@pytest.mark.parametrize("command", ["seg", "video"])
def test_model_file_that_is_not_a_vtk_export_says_what_is_missing(command: str, tmp_path: Path, capsys,
                                                                  clip: Path) -> None:
    target = str(COLIN if command == "seg" else clip)
    for path, message in _bad_files(tmp_path):
        code = main([command, "predict", "--model-file", str(path), "--input", target, "--out", str(tmp_path / "o")])
        err = _one_line_error(capsys)
        assert code == 2 and message in err, (path, err)
    assert not (tmp_path / "o").exists()


def test_model_file_of_another_task_and_with_other_sources(tmp_path: Path, capsys, clip: Path) -> None:
    import backbones
    from backbones.export import export_model, prepare_export

    model, meta = prepare_export(backbones.registry, "vit_tiny_patch16_224",
                                 model_args=backbones.registry.tiny_overrides("vit_tiny_patch16_224"))
    path = export_model(model, tmp_path / "vit.pt", "torchscript", meta).path
    assert main(["seg", "predict", "--model-file", str(path), "--input", str(COLIN), "--out", str(tmp_path)]) == 2
    assert "vit.pt: a backbone export (vit_tiny_patch16_224), not a segmentation one" in _one_line_error(capsys)
    assert main(["video", "predict", "--model-file", str(path), "--input", str(clip), "--out", str(tmp_path)]) == 2
    assert "not a video one" in _one_line_error(capsys)
    assert main(["seg", "predict", "--model-file", str(path), "--checkpoint", "run", "--input", str(COLIN),
                 "--out", str(tmp_path)]) == 2
    assert "--checkpoint: not with --model-file" in _one_line_error(capsys)
    assert main(["video", "predict", "--model-file", str(path), "--num-frames", "4", "--input", str(clip),
                 "--out", str(tmp_path)]) == 2
    assert "--num-frames: not with --model-file" in _one_line_error(capsys)


def test_onnx_model_file_without_onnxruntime_asks_for_the_extra(seg_run: Path, tmp_path: Path, capsys,
                                                                monkeypatch) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07" + bytes(100))  # any non-zip file is read as ONNX
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["seg", "predict", "--model-file", str(tmp_path / "m.onnx"), "--input", str(COLIN), "--out",
                 str(tmp_path / "o")]) == 2
    assert f"install the deploy extra: {DEPLOY_INSTALL}" in _one_line_error(capsys)
    with pytest.raises(UserError, match="need onnxruntime; install the deploy extra"):
        from backbones.runtime import onnx_session
        onnx_session(b"")


# --------------------------------------------------------------------------------------- unexportable model
class _CumSumMax(nn.Module):
    """A tiny segmentation 'network' whose running maximum (aten::cummax) ONNX has no operator for."""

    spatial_dims = 3

    def __init__(self, num_classes: int = 2, in_chans: int = 1, img_size: int = 8) -> None:
        super().__init__()
        self.num_classes, self.pretrained_cfg = num_classes, {"input_size": (in_chans, img_size, img_size, img_size)}
        self.head = nn.Conv3d(in_chans, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cummax(x, dim=2)[0])  # (B, K, D, H, W)


def vtk_test_cummax_seg(pretrained=None, **kwargs) -> nn.Module:
    return _CumSumMax(**kwargs)


@_NEEDS_ORT
def test_unexportable_operator_names_the_op_and_the_model(tmp_path: Path, capsys) -> None:
    import medvit

    meta = dict(input_size=(1, 8, 8, 8), spatial_dims=3, protocol=dict(roi=(8, 8, 8), num_classes=2))
    with registered(medvit.registry, vtk_test_cummax_seg, meta=meta):
        assert main(["models", "export", "--model", "vtk_test_cummax_seg", "--out", str(tmp_path / "m.onnx")]) == 2
        assert _one_line_error(capsys) == ("vtk: error: vtk_test_cummax_seg: cannot export to ONNX: operator "
                                           "aten::cummax is not supported at opset 17 (try --format torchscript)")
        assert list(tmp_path.iterdir()) == []
        assert main(["models", "export", "--model", "vtk_test_cummax_seg", "--out", str(tmp_path / "m.pt")]) == 0

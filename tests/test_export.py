"""ONNX / TorchScript export (``backbones.export``, ``vtk models export``).

Parity: every registered model of ``backbones``, ``medvit`` and ``videovit`` at its tiny config (weights moved off
their init) is exported with a batch of 1, loaded back with :func:`load_exported` and run on a batch of 2; the
output must equal PyTorch's within 1e-4 (fp32). ONNX cases are skipped, with the install line as the reason, when
the ``deploy`` extra (onnx, onnxruntime) is not installed; TorchScript cases always run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import List

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones.export import (DEPLOY_INSTALL, EXTRA_FILE, FORMATS, METADATA_KEY, example_input, export_model,
                              load_exported, prepare_export, protocol_metadata)
from cli.main import main
from engine.errors import RunError, UserError
from vtk_testing import perturb_

_HAS_DEPLOY = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
_NEEDS_DEPLOY = pytest.mark.skipif(not _HAS_DEPLOY, reason=f"the deploy extra is not installed ({DEPLOY_INSTALL}: "
                                   "onnx, onnxruntime)")
ATOL = 1e-4


def _registries():
    return [(pkg, importlib.import_module(pkg).registry) for pkg in ("backbones", "medvit", "videovit")]


_CASES = [pytest.param(reg, name, fmt, id=f"{pkg}:{name}:{fmt}", marks=[_NEEDS_DEPLOY] if fmt == "onnx" else [])
          for pkg, reg in _registries() for name in reg.list_models()
          if reg.entrypoint(name).__module__.startswith(pkg + ".") for fmt in FORMATS]


def _tiny(reg, name: str, **extra):
    torch.manual_seed(0)
    model, meta = prepare_export(reg, name, model_args={**reg.tiny_overrides(name), **extra})
    return perturb_(model), meta


def _registry(name: str):
    return next(reg for _, reg in _registries() if reg.is_model(name))


def _assert_parity(runner, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = model(x)
    assert ref.flatten(1).std(1).min() > 0, "constant output: the parity check would prove nothing"
    torch.testing.assert_close(runner(x), ref, rtol=0, atol=ATOL)


def _leftovers(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("reg,name,fmt", _CASES)
def test_export_parity(reg, name: str, fmt: str, tmp_path: Path, one_thread) -> None:
    model, meta = _tiny(reg, name)
    report = export_model(model, tmp_path / f"m.{fmt}", fmt, meta)
    assert report.max_abs_diff <= ATOL
    runner, loaded = load_exported(report.path)
    assert loaded["model"] == reg.resolve(name) and loaded["format"] == fmt and loaded["dynamic"]["batch"]
    assert loaded["input_size"] == list(model.pretrained_cfg["input_size"])
    _assert_parity(runner, model, example_input(meta["input_size"], batch=2, seed=7))  # traced with batch 1
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------- metadata
def test_segmentation_protocol_follows_the_model() -> None:
    import medvit
    model, meta = _tiny(medvit.registry, "unetr")
    p = meta["protocol"]
    assert meta["task"] == "seg" and meta["input_size"] == [1, 16, 16, 16] and p["roi"] == [16, 16, 16]
    assert p["spacing"] == [1.5, 1.5, 2.0] and (p["a_min"], p["a_max"]) == (-175.0, 250.0)
    assert meta["num_classes"] == 14 and meta["class_names"][:2] == ["background", "spleen"]
    assert len(meta["class_names"]) == 14 and meta["model_args"] == medvit.registry.tiny_overrides("unetr")
    json.dumps(meta, allow_nan=False)


def test_video_protocol_follows_the_model() -> None:
    import videovit
    model, meta = _tiny(videovit.registry, "timesformer")  # an alias
    p = meta["protocol"]
    assert meta["model"] == "timesformer_base_patch16_224" and meta["task"] == "video"
    assert meta["num_frames"] == 4 and meta["input_size"] == [3, 4, 32, 32]
    assert (p["stride"], p["crop_size"], p["short_side"], p["views"]) == (32, 32, 32, "1x3")
    assert meta["mean"] == [0.45] * 3 and meta["std"] == [0.225] * 3 and meta["class_names"] is None


def _save_run(tmp_path: Path, cfg, model: nn.Module) -> Path:
    from engine.checkpoint import serialize_weights
    path = tmp_path / "run.safetensors"
    path.write_bytes(serialize_weights(model, cfg, step=3))
    return path


def test_cli_export_of_a_video_run_carries_its_protocol(tmp_path: Path, capsys, one_thread) -> None:
    import videovit
    from engine import TrainConfig
    name, classes = "timesformer_base_patch16_224", ["push", "pull", "wave"]
    args = {**videovit.registry.tiny_overrides(name), "num_classes": 3}
    cfg = TrainConfig(task="video", model=name, model_args=args, data="ucf101",
                      data_args={"classes": classes, "num_frames": 4, "stride": 8, "crop_size": 32, "short_side": 48,
                                 "eval_short_side": 40,
                                 "val_views": "2x3", "mean": [0.5] * 3, "std": [0.25] * 3})
    trained = perturb_(videovit.create_model(name, **args))
    ckpt = _save_run(tmp_path, cfg, trained)
    assert main(["models", "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.pt")]) == 0
    assert "max |torchscript - PyTorch|" in capsys.readouterr().out
    runner, meta = load_exported(tmp_path / "m.pt")
    assert meta["class_names"] == classes and meta["num_classes"] == 3 and meta["source"] == str(ckpt)
    assert (meta["protocol"]["stride"], meta["protocol"]["short_side"], meta["protocol"]["views"]) == (8, 40, "2x3")
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3 and meta["num_frames"] == 4
    _assert_parity(runner, trained.eval(), example_input(meta["input_size"], batch=3, seed=4))


@_NEEDS_DEPLOY
def test_cli_export_of_a_seg_run_carries_its_protocol(tmp_path: Path, one_thread) -> None:
    import medvit
    from engine import TrainConfig
    names = ["background", "liver", "spleen"]
    args = {**medvit.registry.tiny_overrides("unetr"), "num_classes": 3}
    cfg = TrainConfig(task="seg", model="unetr", model_args=args, data="decathlon",
                      data_args={"roi": [16, 16, 16], "spacing": [1.0, 1.0, 2.5], "a_min": -100.0, "a_max": 200.0,
                                 "names": names})
    trained = perturb_(medvit.create_model("unetr", **args))
    ckpt = _save_run(tmp_path, cfg, trained)
    assert main(["models", "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "seg.onnx")]) == 0
    runner, meta = load_exported(tmp_path / "seg.onnx")
    p = meta["protocol"]
    assert meta["class_names"] == names and p["roi"] == [16, 16, 16] and p["spacing"] == [1.0, 1.0, 2.5]
    assert (p["a_min"], p["a_max"], p["dataset"]) == (-100.0, 200.0, "decathlon") and meta["task"] == "seg"
    assert p["num_classes"] == meta["num_classes"] == 3
    _assert_parity(runner, trained.eval(), example_input(meta["input_size"], batch=2, seed=4))


@_NEEDS_DEPLOY
def test_onnx_file_holds_standard_ops_and_vtk_metadata(tmp_path: Path, one_thread) -> None:
    import backbones
    import onnx
    model, meta = _tiny(backbones.registry, "vit_tiny_patch16_224")
    export_model(model, tmp_path / "vit.onnx", "onnx", meta)
    proto = onnx.load(str(tmp_path / "vit.onnx"))
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert {d for d, _ in ops} <= {"", "ai.onnx"}, f"non-standard ops: {ops}"
    assert {"MatMul", "Softmax"} <= {op for _, op in ops}  # SDPA as standard ops
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props[METADATA_KEY])["protocol"] == {} and json.loads(props[METADATA_KEY])["mean"] == [0.5] * 3
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch" and not batch.HasField("dim_value")


# --------------------------------------------------------------------------------------- dynamic sizes
@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=_NEEDS_DEPLOY), "torchscript"])
def test_dynamic_spatial_size_where_the_model_supports_it(fmt: str, tmp_path: Path, one_thread) -> None:
    import backbones
    model, meta = _tiny(backbones.registry, "axial_nopos_tiny")  # convolutions + axial attention, no tables
    report = export_model(model, tmp_path / f"a.{fmt}", fmt, meta)
    runner, loaded = load_exported(report.path)
    assert report.dynamic_spatial and loaded["dynamic"]["spatial"]
    for side in (16, 48, 64):
        _assert_parity(runner, model, example_input([3, side, side], batch=2, seed=side))


def test_static_spatial_size_is_checked_and_reported(tmp_path: Path, one_thread) -> None:
    import backbones
    model, meta = _tiny(backbones.registry, "vit_tiny_patch16_224")  # fixed position table
    with pytest.raises(UserError, match="vit_tiny_patch16_224: --dynamic-spatial: the model does not run at input"):
        export_model(model, tmp_path / "v.pt", "torchscript", meta, dynamic_spatial=True)
    report = export_model(model, tmp_path / "v.pt", "torchscript", meta)
    runner, loaded = load_exported(report.path)
    assert not report.dynamic_spatial and loaded["dynamic"] == {"batch": True, "spatial": False}
    with pytest.raises(UserError, match=r"expects input Nx3x32x32, got 2x3x16x16"):
        runner(torch.zeros(2, 3, 16, 16))
    assert runner(torch.zeros(5, 3, 32, 32)).shape == (5, 10)


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=_NEEDS_DEPLOY), "torchscript"])
def test_chunked_frame_encoding_exports_unchunked(fmt: str, tmp_path: Path, one_thread) -> None:
    import videovit
    model, meta = _tiny(videovit.registry, "stam_16", frame_chunk_size=3)  # 4 frames/clip: chunks cross clips
    runner, _ = load_exported(export_model(model, tmp_path / f"s.{fmt}", fmt, meta).path)
    assert model.frame_chunk_size == 3 and model.eval_chunk_size == 32  # restored after the export
    _assert_parity(runner, model, example_input(meta["input_size"], batch=3, seed=9))


class _BatchDependent(nn.Module):
    """Python control flow on the batch size: a trace freezes the branch of its example."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) * (2.0 if x.shape[0] == 1 else 3.0)


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=_NEEDS_DEPLOY), "torchscript"])
def test_export_that_does_not_match_pytorch_writes_nothing(fmt: str, tmp_path: Path) -> None:
    meta = {"model": "batch_dependent", "task": "backbone", "input_size": [3, 4, 4]}
    with pytest.raises(RunError, match=f"batch_dependent: the {fmt} export differs from PyTorch by .* nothing written"):
        export_model(_BatchDependent(), tmp_path / "b.out", fmt, meta)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- bad input
class _CumMax(nn.Module):
    pretrained_cfg = {"input_size": (3, 8, 8)}
    num_classes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, dim=1)[0]


@pytest.fixture
def cummax_model():
    import backbones

    def vtk_test_cummax(pretrained=None, **kwargs):
        return _CumMax()
    backbones.register_model(vtk_test_cummax, meta=dict(input_size=(3, 8, 8), spatial_dims=2))
    yield "vtk_test_cummax"
    backbones.registry.unregister("vtk_test_cummax")


@_NEEDS_DEPLOY
def test_operator_onnx_lacks_is_one_line_user_error(cummax_model: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    assert main(["models", "export", "--model", cummax_model, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err == (f"vtk: error: {cummax_model}: cannot export to ONNX: operator aten::cummax is not supported at "
                   "opset 17 (try --format torchscript)")
    assert "graph" not in captured.out and out.read_bytes() == b"previous export" and _leftovers(tmp_path) == []
    assert main(["models", "export", "--model", cummax_model, "--out", str(tmp_path / "m.pt")]) == 0


class _ShapeArgument(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, x.shape[1])


@_NEEDS_DEPLOY
def test_shape_dependent_argument_names_the_source_line(tmp_path: Path) -> None:
    meta = {"model": "shape_argument", "task": "backbone", "input_size": [2, 4, 4]}
    expected = (r"shape_argument: cannot export to ONNX: argument num_groups of aten::group_norm at "
                r"\S*test_export.py:\d+ is computed from the input's shape")
    with pytest.raises(UserError, match=expected):
        export_model(_ShapeArgument(), tmp_path / "g.onnx", "onnx", meta)


def test_cli_export_rejects_bad_options(tmp_path: Path, capsys) -> None:
    cases = [
        (["--out", str(tmp_path / "a.onnx")], "pass exactly one of --checkpoint RUN and --model NAME"),
        (["--model", "vit_tiny_patch16_224", "--checkpoint", "run", "--out", "a.onnx"], "pass exactly one of"),
        (["--model", "vit_tiny_patch16_224", "--out", str(tmp_path / "a.bin")], "cannot tell the format from '.bin'"),
        (["--model", "vit_tiny_patch16_224", "--out", "a.onnx", "--format", "onx"], "did you mean"),
        (["--model", "vit_tiny_patch16_224", "--out", "a.onnx", "--model-arg", "depth"], "expected KEY=VALUE"),
        (["--model", "vit_tiny_patch16_22", "--out", "a.onnx"], "unknown model 'vit_tiny_patch16_22'"),
        (["--model", "vit_tiny_patch16_224", "--pretrained", str(tmp_path / "no.pth"), "--out", "a.pt"],
         "no such file"),
        (["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "a.pt")], "missing"),
    ]
    for argv, message in cases:
        assert main(["models", "export", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("vtk: error: ") and message in err and len(err.strip().splitlines()) == 1, (argv, err)


def _plain_onnx(path: Path) -> None:
    torch.onnx.export(nn.Linear(3, 2), (torch.zeros(1, 3),), str(path), dynamo=False, input_names=["input"],
                      output_names=["output"])


@_NEEDS_DEPLOY
def test_loader_says_what_is_missing_from_onnx(tmp_path: Path, one_thread) -> None:
    import backbones
    import onnx
    _plain_onnx(tmp_path / "plain.onnx")
    with pytest.raises(UserError, match=r"plain.onnx: not a vtk export: its ONNX metadata_props have no 'vtk' entry"):
        load_exported(tmp_path / "plain.onnx")
    model, meta = _tiny(backbones.registry, "vit_tiny_patch16_224")
    export_model(model, tmp_path / "vit.onnx", "onnx", meta)
    proto = onnx.load(str(tmp_path / "vit.onnx"))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    entry.value = json.dumps({k: v for k, v in json.loads(entry.value).items() if k not in ("task", "protocol")})
    onnx.save(proto, str(tmp_path / "cut.onnx"))
    with pytest.raises(UserError, match=r"cut.onnx: not a vtk export: its vtk metadata lacks key\(s\) task, protocol"):
        load_exported(tmp_path / "cut.onnx")
    entry.value = "{not json"
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(UserError, match="bad.onnx: bad vtk metadata"):
        load_exported(tmp_path / "bad.onnx")


def test_loader_says_what_is_missing_from_torchscript(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.trace(nn.Linear(3, 2), torch.zeros(1, 3)), str(tmp_path / "plain.pt"))
    with pytest.raises(UserError, match=f"plain.pt: not a vtk export: the TorchScript archive has no extra file "
                                        f"'{EXTRA_FILE}'"):
        load_exported(tmp_path / "plain.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(UserError, match="state.pt: not a TorchScript archive"):
        load_exported(tmp_path / "state.pt")


def test_loader_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing.onnx: no such file"):
        load_exported(tmp_path / "nothing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model" * 10)
    expected = "neither an ONNX model nor a TorchScript archive" if _HAS_DEPLOY else "install the deploy extra"
    with pytest.raises(UserError, match=expected):
        load_exported(tmp_path / "junk.onnx")


def test_protocol_metadata_is_json_for_every_entry() -> None:
    for _, reg in _registries():
        for name in reg.list_models():
            model = type("M", (), {"pretrained_cfg": {"input_size": reg.metadata(name)["input_size"]}})()
            meta = protocol_metadata(reg, name, model)
            assert json.loads(json.dumps(meta, allow_nan=False)) == meta, name
            assert meta["task"] in ("seg", "video", "backbone") and meta["protocol"] is not None, name


def test_segmentation_protocol_without_a_run_is_complete() -> None:
    """A 2D entry naming no window gets the pipeline's (medvit.recipes), and generic class names: a predictor reads
    everything from the file."""
    import medvit
    from medvit.recipes import WINDOW_2D

    model = type("M", (), {"pretrained_cfg": {"input_size": (3, 32, 32)}, "num_classes": 2})()
    meta = protocol_metadata(medvit.registry, "medt", model)
    p = meta["protocol"]
    assert p["roi"] == [32, 32] and (p["a_min"], p["a_max"]) == tuple(WINDOW_2D) and "spacing" not in p
    assert meta["class_names"] == ["background", "class 1"] and meta["spatial_dims"] == 2

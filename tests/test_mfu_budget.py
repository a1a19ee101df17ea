"""benchmarks/mfu_budget.py: the matmuls it rebuilds from a profile are the step's, call for call and FLOP for FLOP."""

import json

import pytest
import torch

from benchmarks import mfu_budget
from benchmarks._common import count_flops, flop_counter
from benchmarks.train_step_suite import build_case, build_models, make_step


def _toy(a, w, b, q, k):
    torch.addmm(b, a, w.t())  # a transposed weight, as F.linear gives it
    torch.bmm(q, k.transpose(1, 2))
    torch.baddbmm(torch.zeros(2, 5, 5), q, k.transpose(1, 2))
    return a @ w.t()


def test_matmul_calls_keep_shapes_strides_dtypes_and_counts():
    from torch.profiler import ProfilerActivity, profile

    a, w, b = torch.randn(6, 4).bfloat16(), torch.randn(3, 4).bfloat16(), torch.randn(3).bfloat16()
    q, k = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        _toy(a, w, b, q, k)
    calls = mfu_budget.matmul_calls(prof.events())
    addmm = next(c for c in calls if c[0] == "aten::addmm")
    assert addmm[1] == ((3,), (6, 4), (4, 3)) and addmm[2][2] == (1, 4) and addmm[3] == ("c10::BFloat16",) * 3
    assert sorted((c[0], n) for c, (n, _) in calls.items()) == [
        ("aten::addmm", 1), ("aten::baddbmm", 1), ("aten::bmm", 1), ("aten::mm", 1)]
    total = sum(mfu_budget.matmul_flops(c[0], c[1]) * n for c, (n, _) in calls.items())
    assert total == count_flops(lambda: _toy(a, w, b, q, k))
    rebuilt = mfu_budget._operand(addmm[1][2], addmm[2][2], addmm[3][2])
    assert rebuilt.shape == (4, 3) and rebuilt.stride() == (1, 4) and rebuilt.dtype == torch.bfloat16
    assert mfu_budget.standalone_ms(addmm) > 0


def test_budget_of_a_tiny_step_accounts_for_every_matmul_flop(tmp_path, one_thread):
    out, js = tmp_path / "budget.md", tmp_path / "budget.json"
    assert mfu_budget.main(["--family", "vit_b", "--size", "tiny", "--steps", "1", "--out", str(out),
                            "--json", str(js)]) == 0
    (b,) = json.loads(js.read_text())
    case = build_case("vit_b", "tiny")
    vtk, _ = build_models(case, torch.device("cpu"))
    with flop_counter() as counter:
        make_step(vtk, case, b["precision"], torch.device("cpu"), optimizer="engine")()
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    convs = sum(n for op, n in per_op.items() if op.startswith("aten.convolution"))
    # nothing missed, nothing twice: the rebuilt matmuls (and CPU flash attention) are every FLOP but the convs'
    assert b["executed_matmul_gflop"] * 1e9 == pytest.approx(sum(per_op.values()) - convs, rel=1e-9)
    assert b["unrebuilt_gflop"] * 1e9 == pytest.approx(convs, rel=1e-9, abs=1e-3)
    assert b["profiled_ms"] == pytest.approx(sum(b["groups_ms"].values()))
    assert b["matmul_alone_ms"] == pytest.approx(sum(r["alone_ms"] for r in b["matmuls"]))
    assert 0 < b["mfu"] and 0 < b["mfu_ceiling"] and b["other_ops"]
    text = out.read_text()
    assert text.startswith("<!-- python -m benchmarks.mfu_budget --family vit_b --size tiny -->")
    assert "MFU ceiling with nothing but the matmuls" in text and "| largest other ops |" in text

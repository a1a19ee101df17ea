"""The GPU suite's CPU dry run (what CI can run): it completes and writes the JSON the docs describe."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import gpu_suite


def _check_family(row):
    assert row["error"] is None, row["error"]
    for key in ("family", "config", "reference", "reference_missing", "seconds", "flops", "tokens", "tokens_per_s",
                "mfu", "speedup", "peak_mem_mib", "sdpa", "math_fallbacks"):
        assert key in row, key
    assert row["seconds"]["vtk"] > 0 and row["flops"]["vtk"] > 0 and 0 < row["mfu"]["vtk"]
    assert row["tokens_per_s"]["vtk"] == pytest.approx(row["tokens"] / row["seconds"]["vtk"])
    assert row["sdpa"], "every family here has attention: its SDPA calls must be recorded"
    for call in row["sdpa"]:
        assert call["kernel"] in gpu_suite.KERNELS and call["calls"] >= 1 and len(call["q"]) == 4


def test_dry_run_writes_the_schema_and_reports_a_missing_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # timm "not installed": ViT-B's reference must be skipped
    out = tmp_path / "suite.json"
    assert gpu_suite.main(["--dry-run", "--family", "vit_b,timesformer", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["suite"] == "vtk-gpu-suite" and res["schema_version"] == gpu_suite.SCHEMA_VERSION
    assert res["dry_run"] is True and res["device"]["type"] == "cpu" and res["bf16_matrix_tflops"] > 0
    vit, tsf = res["families"]
    for row in (vit, tsf):
        _check_family(row)
    assert "timm" in vit["reference_missing"] and vit["speedup"] is None and "ref" not in vit["seconds"]
    assert tsf["reference_missing"] is None
    assert tsf["speedup"] == pytest.approx(tsf["seconds"]["ref"] / tsf["seconds"]["vtk"])
    sw = res["sliding_window"]
    assert "error" not in sw, sw
    assert sw["windows"] == 2 * 3 * 3 and sw["seconds"]["vtk_bf16"] > 0 and sw["mfu_vtk"] > 0
    assert sw["speedup"] == pytest.approx(sw["seconds"]["monai_fp32"] / sw["seconds"]["vtk_bf16"])
    assert isinstance(res["math_fallbacks"], list) and res["elapsed_s"] > 0
    assert "wrote" in capsys.readouterr().out


def test_budget_skips_families_and_bad_family_is_rejected(tmp_path):
    res = gpu_suite.run_suite(True, ["vit_b"], 1, 0, budget_s=-1.0)
    assert res["families"] == [] and res["skipped"][0]["family"] == "vit_b"
    with pytest.raises(SystemExit):
        gpu_suite.main(["--dry-run", "--family", "vit_z", "--out", str(tmp_path / "x.json")])

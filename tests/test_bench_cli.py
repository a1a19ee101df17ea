"""``vtk bench train-step``: the table it writes agrees with the JSON rows; bad options exit 2 naming the option."""

from __future__ import annotations

import json
import re
import statistics

import pytest
import torch

from cli.main import main


@pytest.mark.parametrize("native", [True, False])
def test_default_precisions_leave_out_emulated_bf16(monkeypatch, capsys, native):
    import engine.context
    from benchmarks.train_step_suite import default_precisions

    monkeypatch.setattr(engine.context, "cpu_has_native_bf16", lambda: native)
    assert default_precisions(torch.device("cpu")) == (["32", "bf16"] if native else ["32"])
    out = capsys.readouterr().out
    assert ("bf16 left out: cpu has no native bf16 (no avx512_bf16 or AMX" in out) == (not native)


def test_train_step_table_and_json(tmp_path, capsys):
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    assert main(["bench", "train-step", "--family", "vivit", "--size", "tiny", "--steps", "2", "--warmup", "0",
                 "--precision", "32,bf16", "--no-memory", "--device", "cpu", "--out", str(md), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    (row,) = res["rows"]
    t = row["times"]
    assert set(t) == {"vtk/32", "ref/32", "vtk/bf16", "ref/bf16", "vtk/default"}
    assert row["speedup"]["32"] == pytest.approx(t["ref/32"] / t["vtk/32"])
    assert row["speedup"]["default"] == pytest.approx(t["ref/32"] / t["vtk/default"])
    assert row["speedup"]["engine"] == pytest.approx(t[f"vtk/{row['default_precision']}"] / t["vtk/default"])
    assert row["flops"]["vtk"] > 0 and row["flops"]["ref"] > 0
    # MFU against the matrix rate timed in the same rounds as the steps
    assert set(row["samples"]) == set(t) | {"mm/32", "mm/bf16"} and len(row["samples"]["mm/bf16"]) == 2
    rate = row["rates"]["bf16"]
    assert rate == pytest.approx(row["matrix_flop"]["bf16"] / statistics.median(row["samples"]["mm/bf16"]))
    assert row["matrix_flop"]["bf16"] in [2.0 * n ** 3 for n in (256, 512, 1024, 2048)]  # matrix_size's edges
    assert row["mfu"]["vtk/bf16"] == pytest.approx(row["flops"]["vtk"] / t["vtk/bf16"] / rate)
    text = md.read_text()
    assert text.startswith("<!-- python -m benchmarks.train_step_suite") and "| vivit |" in text
    # per-round ratios: the two rounds' ref/vtk side by side, their extremes in brackets after the ratio
    ratios = sorted(a / b for a, b in zip(row["samples"]["ref/32"], row["samples"]["vtk/32"]))
    spread = row["rounds"]["32"]
    assert spread["rounds"] == 2 and (spread["lo"], spread["hi"]) == pytest.approx((ratios[0], ratios[-1]))
    assert f"| {row['speedup']['32']:.2f} ({spread['lo']:.2f}-{spread['hi']:.2f}) |" in text
    rate = row["rates"][row["default_precision"]]
    assert row["mfu"]["vtk/default"] == pytest.approx(row["flops"]["vtk"] / t["vtk/default"] / rate)
    d = row["rounds"]["default"]
    assert (f"| {row['speedup']['default']:.2f} ({d['lo']:.2f}-{d['hi']:.2f}) | {row['mfu']['vtk/default']:.0%} |"
            in text)  # default x, MFU default
    captured = capsys.readouterr()
    assert "| vivit |" in captured.out
    # progress over the rounds, with an ETA from the first one
    assert re.search(r"train-step: 1/2 rounds [\d.]+ rounds/s eta ", captured.err), captured.err
    assert re.search(r"train-step: 2/2 rounds [\d.]+ rounds/s eta ", captured.err), captured.err


def test_batch_replaces_the_sizes_batch(tmp_path):
    from benchmarks.train_step_suite import build_case

    base, three = build_case("unetr", "tiny"), build_case("unetr", "tiny", 3)
    assert base.shape[0] == 1 and three.shape == (3, *base.shape[1:]) and three.tokens == 3 * base.tokens
    assert three.config == base.config[:-len(" b1")] + " b3"
    js = tmp_path / "t.json"
    assert main(["bench", "train-step", "--family", "vit_b", "--size", "tiny", "--steps", "1", "--warmup", "0",
                 "--precision", "32", "--no-memory", "--device", "cpu", "--batch", "3", "--json", str(js)]) == 0
    (row,) = json.loads(js.read_text())["rows"]
    assert row["config"].endswith(" b3") and row["tokens"] == 3 * build_case("vit_b", "tiny").tokens // 2


def test_memory_probe_measures_a_step_in_a_subprocess_and_repeats_exactly():
    from benchmarks.train_step_suite import measure_memory

    a = measure_memory("vit_b", "vtk", "32", "tiny", torch.device("cpu"))
    b = measure_memory("vit_b", "vtk", "32", "tiny", torch.device("cpu"))
    assert a is not None and b is not None
    assert a["growth_mib"] > 0 and a["rss_growth_mib"] >= 0
    assert a["growth_mib"] == b["growth_mib"]  # tensor bytes: no allocator noise
    four = measure_memory("vit_b", "vtk", "32", "tiny", torch.device("cpu"), batch=4)  # the probe gets --batch
    assert four is not None and four["growth_mib"] > a["growth_mib"]


def test_tensor_peak_counts_live_tensors_views_and_saved_activations():
    from benchmarks._common import TensorPeak

    mib = 2 ** 18  # float32 elements in 1 MiB
    with TensorPeak() as seq:
        for _ in range(3):
            t = torch.ones(4 * mib)  # 4 MiB, freed before the next
            del t
    assert seq.peak == 4 * 2 ** 20 and seq.current == 0
    with TensorPeak() as both:
        a = torch.ones(4 * mib)
        v = a.view(2, -1)[0]  # a view keeps its storage alive, and counts nothing more
        b = torch.ones(4 * mib)
        del a
        c = torch.ones(mib)
    assert both.peak == 9 * 2 ** 20 and both.current == 9 * 2 ** 20
    del v, b, c
    assert both.current == 0
    x = torch.randn(4 * mib, requires_grad=True)
    with TensorPeak() as saved:
        y = x.exp()  # saved for backward: exp's output
        y.sum().backward()
    del y
    assert saved.peak >= 8 * 2 ** 20  # exp's output and x's 4 MiB gradient


@pytest.mark.parametrize("command,args,needle", [
    ("train-step", ["--family", "vitb"], "--family: 'vitb' is not one of"),
    ("train-step", ["--precision", "32,fp8"], "--precision: 'fp8' is not one of 32, bf16"),
    ("train-step", ["--size", "huge"], "--size: 'huge' is not one of tiny, small, full"),
    ("train-step", ["--steps", "0"], "--steps must be >= 1"),
    ("train-step", ["--batch", "0"], "--batch must be >= 1, got 0"),
    ("mfu-budget", ["--family", "vit_b,vitb"], "--family: 'vitb' is not one of"),
    ("mfu-budget", ["--size", "huge"], "--size: 'huge' is not one of tiny, small, full"),
    ("mfu-budget", ["--steps", "0"], "--steps must be >= 1"),
    ("matrix-rate", ["--dtypes", "32,fp8"], "--dtypes: 'fp8' is not one of 32, bf16, 16"),
    ("matrix-rate", ["--n", "64"], "--n must be >= 256"),
])
def test_bad_options_exit_2(command, args, needle, capsys):
    assert main(["bench", command, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_mfu_budget_writes_its_table(tmp_path, capsys, one_thread):
    out = tmp_path / "budget.md"
    assert main(["bench", "mfu-budget", "--family", "vit_b", "--size", "tiny", "--steps", "1", "--out", str(out)]) == 0
    assert "MFU ceiling with nothing but the matmuls" in out.read_text() and "**ViT tiny" in capsys.readouterr().out


def test_a_subprocess_peak_memory_is_its_own_not_its_parents():
    """``peak_rss_mib`` in a fresh interpreter started by a large process: ``ru_maxrss`` carries the parent's size
    over fork + exec (the suite's memory columns once read 5-8 GiB for every model); ``VmHWM`` does not."""
    import json
    import subprocess
    import sys

    from benchmarks._common import rss_mib

    ballast = bytearray(600 * 2 ** 20)  # this process grows by 600 MiB, every page touched
    ballast[::4096] = b"1" * len(ballast[::4096])
    parent = rss_mib()
    assert parent > 600
    code = ("import json; from benchmarks._common import peak_rss_mib, reset_peak_rss, rss_mib; "
            "r = reset_peak_rss(); b = rss_mib(); x = bytearray(100 * 2 ** 20); x[::4096] = b'1' * len(x[::4096]); "
            "print(json.dumps({'base': b, 'peak': peak_rss_mib(), 'reset': r}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    del ballast
    assert 90 <= out["peak"] - out["base"] < 300, out  # the child's own 100 MiB are seen
    assert out["peak"] < parent - 300, (out, parent)  # the parent's size is not


def test_matrix_rate_prints_its_table(capsys):
    assert main(["bench", "matrix-rate", "--dtypes", "32", "--n", "256", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "--precision auto picks" in out and "| 32 | 256 |" in out and "| 1.00x | native |" in out


def test_default_step_runs_in_its_own_process_and_the_parent_keeps_glibcs_heap(monkeypatch):
    """The references' default use is timed on glibc's untouched heap: the parent never calls ``mallopt``; vtk's
    default step (with the engine's heap policy) runs in a step server."""
    import engine.heap
    from benchmarks.train_step_suite import ChildStep, run_family

    calls = []
    monkeypatch.setattr(engine.heap, "set_cpu_heap", lambda p: calls.append(p) or True)
    monkeypatch.setattr(engine.heap, "glibc", lambda: calls.append("glibc"))
    row = run_family("vit_b", "tiny", ["32"], 1, 0, torch.device("cpu"), {"32": 1e9}, memory=False)
    assert calls == [] and row["times"]["vtk/default"] > 0
    with pytest.raises(RuntimeError, match="vtk/default step process: ValueError: family 'vitb' is not one of"):
        ChildStep("vitb", "tiny", None, 1)


def _probe(step_mib: float, base_mib: float = 400.0) -> dict:
    return {"growth_mib": step_mib, "rss_growth_mib": step_mib * 0.9, "base_mib": base_mib}


def test_check_fits_counts_the_largest_step_beside_the_default_steps_server():
    from benchmarks.train_step_suite import check_fits

    probes = {"vtk/32": _probe(6000), "ref/32": _probe(15000), "vtk/bf16": _probe(9000)}
    # 1.3 * (ref/32 15000 + the server's vtk/bf16 9000) + bases 2 * 400 + 400 = 32400 MiB
    timed = ["vtk/32", "ref/32", "vtk/bf16", "ref/bf16"]
    check_fits("swin_unetr", probes, "bf16", timed, available_mib=32500)
    with pytest.raises(MemoryError, match=r"swin_unetr: its steps need about 31\.6 GiB at once \(the largest, "
                                          r"ref/32, 14\.6 GiB, beside vtk's default step, 8\.8 GiB, each \+30%, "
                                          r"and the models\), but 31\.2 GiB is available: time fewer precisions "
                                          r"\(--precision\) or a smaller --batch"):
        check_fits("swin_unetr", probes, "bf16", timed, available_mib=32000)
    # --precision bf16: the fp32 probes are not the process's steps (1.3 * 18000 + 1200)
    check_fits("swin_unetr", probes, "bf16", ["vtk/bf16", "ref/bf16"], available_mib=24700)
    with pytest.raises(MemoryError, match="the largest, vtk/bf16"):
        check_fits("swin_unetr", probes, "bf16", ["vtk/bf16", "ref/bf16"], available_mib=24500)
    check_fits("swin_unetr", {"vtk/32": _probe(1e9)}, "bf16", timed, available_mib=1.0)  # no default probe: no check


def test_a_family_that_does_not_fit_is_skipped_and_the_others_are_written(tmp_path, monkeypatch, capsys):
    from benchmarks import train_step_suite as suite

    monkeypatch.setattr(suite, "mem_available_mib", lambda: 8000.0)
    probed = []

    def probes(family, case, precisions, auto, size, device, batch):
        probed.append(family)
        big = 9000.0 if family == "vit_b" else 10.0
        return {"vtk/32": _probe(big), "ref/32": _probe(big), f"vtk/{auto}": _probe(big)}

    monkeypatch.setattr(suite, "_memory_probes", probes)
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    assert suite.main(["--family", "vit_b,vivit", "--size", "tiny", "--steps", "1", "--warmup", "0",
                       "--precision", "32", "--device", "cpu", "--out", str(md), "--json", str(js)]) == 1
    res = json.loads(js.read_text())
    assert probed == ["vit_b", "vivit"] and [r["family"] for r in res["rows"]] == ["vivit"]
    assert [s["family"] for s in res["skipped"]] == ["vit_b"]
    err = capsys.readouterr().err
    assert "skipped vit_b: its steps need about 24.0 GiB" in err
    assert "train-step: 1/2 rounds" in err and "train-step: 2/2 rounds" in err  # the skipped family's round counts
    text = md.read_text()
    assert "| vivit |" in text and "| vit_b |" not in text and "skipped vit_b: its steps need" in text


def test_out_and_json_are_written_after_every_family(tmp_path, monkeypatch):
    from benchmarks import train_step_suite as suite

    js = tmp_path / "t.json"
    real = suite.run_family

    def second_stops(family, *args, **kwargs):
        if family == "vivit":
            raise KeyboardInterrupt  # the run is stopped while the second family runs
        return real(family, *args, **kwargs)

    monkeypatch.setattr(suite, "run_family", second_stops)
    with pytest.raises(KeyboardInterrupt):
        suite.main(["--family", "vit_b,vivit", "--size", "tiny", "--steps", "1", "--warmup", "0", "--precision",
                    "32", "--no-memory", "--device", "cpu", "--json", str(js)])
    assert [r["family"] for r in json.loads(js.read_text())["rows"]] == ["vit_b"]

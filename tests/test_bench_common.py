"""``benchmarks._common``: the MFU denominator stays seconds long where the CPU only emulates a dtype; the
interleaved timing pairs its rounds."""

import pytest
import torch

import benchmarks._common as common


@pytest.mark.parametrize("gflops,n", [(200.0, 2048), (30.0, 1024), (1.0, 512), (0.01, 256)])
def test_cpu_matrix_size_fits_the_budget(monkeypatch, gflops, n):
    monkeypatch.setattr(common, "timed", lambda fn, device: 2.0 * 256 ** 3 / (gflops * 1e9))  # the probe's time
    assert common.matrix_size(torch.float32, torch.device("cpu"), 2048, budget_s=0.5) == n


def test_matrix_rate_on_the_cpu_is_a_rate():
    rate = common.matrix_rate(torch.float32, torch.device("cpu"), n=256, reps=2)
    assert 1e8 < rate < 1e14


def test_cpu_flash_attention_counts_its_matmuls():
    import torch.nn.functional as F

    b, h, n, m, d = 2, 3, 17, 11, 16
    q = torch.randn(b, h, n, d, requires_grad=True)
    k, v = (torch.randn(b, h, m, d, requires_grad=True) for _ in range(2))
    with common.flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert ops == {"aten._scaled_dot_product_flash_attention_for_cpu",
                   "aten._scaled_dot_product_flash_attention_for_cpu_backward"}  # the CPU kernel really ran
    # forward q k^T and p v; backward recomputes q k^T, then dp, dv, dq, dk: 7 products of 2 b h n m d each
    assert counter.get_total_flops() == 7 * 2 * b * h * n * m * d


@pytest.mark.parametrize("native", [True, False])
def test_matrix_rates_say_native_or_emulated_and_what_auto_picks(monkeypatch, tmp_path, native):
    import json

    import engine.context
    from benchmarks import matrix_rates

    monkeypatch.setattr(engine.context, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(engine.context, "cpu_has_native_fp16", lambda: False)
    out = tmp_path / "rates.json"
    assert matrix_rates.main(["--dtypes", "32,bf16,16", "--n", "256", "--reps", "1", "--device", "cpu",
                              "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["dtype"]: r for r in res["rows"]}
    assert res["auto"] == ("bf16" if native else "32") and rows["32"]["vs_fp32"] == 1.0
    assert rows["bf16"]["support"] == ("native" if native else "emulated (no avx512_bf16 or AMX)")
    assert rows["16"]["support"] == "emulated (no avx512_fp16 or AMX-FP16)"
    assert all(r["gflops"] > 0 and r["n"] == 256 for r in res["rows"])
    assert rows["bf16"]["vs_fp32"] == pytest.approx(rows["bf16"]["gflops"] / rows["32"]["gflops"])


def test_round_ratios_pair_the_rounds_and_give_quartiles_from_four_rounds():
    from benchmarks._common import round_ratios

    # ratios per round 2, 1, 0.5: the medians' ratio would be 1, the rounds say the spread
    r = round_ratios([2.0, 1.0, 1.0], [1.0, 1.0, 2.0])
    assert r == {"median": 1.0, "lo": 0.5, "hi": 2.0, "rounds": 3}
    r = round_ratios([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5)  # inclusive quartiles of 1..5
    assert (r["lo"], r["median"], r["hi"], r["rounds"]) == (2.0, 3.0, 4.0, 5)
    with pytest.raises(ValueError, match="got 2 and 1"):
        round_ratios([1.0, 1.0], [1.0])


def test_interleaved_flips_the_order_every_round():
    from benchmarks._common import interleaved, interleaved_samples

    order = []
    fns = {n: (lambda n=n: order.append(n)) for n in "ab"}
    samples = interleaved_samples(fns, steps=3, warmup=1, device=torch.device("cpu"),
                                  on_round=lambda: order.append("|"))
    assert order == ["a", "b", "|", "a", "b", "|", "b", "a", "|", "a", "b", "|"]
    assert [len(v) for v in samples.values()] == [3, 3]
    assert set(interleaved(fns, 1, 0, torch.device("cpu"))) == {"a", "b"}

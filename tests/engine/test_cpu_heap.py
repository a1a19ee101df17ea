"""``TrainConfig.cpu_heap`` / :mod:`engine.heap`: ``retain`` really stops a freed block from faulting in again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.config import TrainConfig
from engine.errors import UserError
from engine.heap import glibc, set_cpu_heap

_FAULTS = """
import json, resource, sys, torch
from engine.heap import set_cpu_heap
applied = set_cpu_heap(sys.argv[1])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512))
opt = torch.optim.AdamW(model.parameters())
x = torch.randn(512, 512)
def step():  # 4 MiB activations and gradients, freed at the end of every step
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(policy: str) -> dict:
    run = subprocess.run([sys.executable, "-c", _FAULTS, policy], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(glibc() is None, reason="mallopt is glibc's")
def test_retain_keeps_freed_blocks_so_train_steps_do_not_fault_them_in_again():
    system, retain = _faults("system"), _faults("retain")
    assert system["applied"] and retain["applied"]
    pages = 10 * 4 * 2 ** 20 // 4096  # ten steps, at least one 4 MiB activation each
    assert system["faults"] > pages, system  # glibc unmaps every freed block: each step faults its tensors in
    assert retain["faults"] < system["faults"] / 20, (retain, system)  # measured: 256 against 122k


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="cpu_heap must be one of retain, system, got 'keep'"):
        set_cpu_heap("keep")
    with pytest.raises(UserError, match="cpu_heap"):
        TrainConfig(cpu_heap="keep").validate()
    assert TrainConfig().cpu_heap == "retain"


def test_the_train_step_suites_step_server_runs_vtk_default_on_the_engine_heap(monkeypatch, capsys):
    """The suite's ``vtk/default`` step runs in a step server that applies the engine's policy (the suite's own
    process never calls ``mallopt``: ``tests/test_bench_cli.py``); one ``ok`` per step on its stdout."""
    import io

    import torch

    import engine.heap
    from benchmarks import train_step_suite as suite

    calls = []
    monkeypatch.setattr(engine.heap, "set_cpu_heap", lambda p: calls.append(p) or True)
    monkeypatch.setattr(sys, "stdin", io.StringIO("step\nstep\nstop\nstep\n"))
    assert suite.step_server("vit_b", "tiny", None, torch.get_num_threads()) == 0
    assert calls == [TrainConfig().cpu_heap] == ["retain"]
    assert capsys.readouterr().out.split() == ["ok"] * 3  # built, then two steps; nothing after "stop"


@pytest.mark.parametrize("policy", ["retain", "system"])
def test_a_cpu_run_applies_its_heap_policy_and_says_so(tmp_path, policy, monkeypatch, capsys):
    import engine.loop
    from engine import fit
    from engine_tasks import ToyTask, base_config

    seen = []
    monkeypatch.setattr(engine.loop, "set_cpu_heap", lambda p: seen.append(p) or True)
    fit(base_config(tmp_path / "run", cpu_heap=policy, max_steps=2, val_every=0), ToyTask())
    assert seen == [policy]
    out = capsys.readouterr()
    assert f"heap {policy}" in out.out + out.err
    assert f"cpu_heap: {policy}" in (tmp_path / "run" / "config.yaml").read_text()


def test_set_cpu_heap_on_acts_on_the_cpu_only(monkeypatch):
    import torch

    import engine.heap

    seen = []
    monkeypatch.setattr(engine.heap, "set_cpu_heap", lambda p: seen.append(p) or True)
    assert engine.heap.set_cpu_heap_on("cpu") and engine.heap.set_cpu_heap_on(torch.device("cpu"), "system")
    assert not engine.heap.set_cpu_heap_on("cuda:0") and not engine.heap.set_cpu_heap_on(torch.device("cuda", 1))
    assert seen == ["retain", "system"]
    with pytest.raises(ValueError, match="cpu_heap must be one of retain, system, got 'keep'"):
        engine.heap.set_cpu_heap_on("cuda", "keep")  # checked on every device

"""``vtk models list`` / ``vtk models info`` through ``cli.main.main``."""

from __future__ import annotations

import time

import pytest
import torch

from cli.main import main


def test_models_list_filters_and_counts(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "list", "vit*", "--params"]) == 0
    out = capsys.readouterr().out
    assert "vit_base_patch16_224" in out and "swin_tiny" not in out
    line = next(l for l in out.splitlines() if " vit_base_patch16_224 " in l)
    assert line.split()[0] == "backbones" and line.split()[2] == "vit" and line.split()[3] == "86.57M"


def test_models_list_covers_all_registries(capsys: pytest.CaptureFixture) -> None:
    import backbones
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert {l.split()[0] for l in out.splitlines()[1:]} >= {"backbones"}
    assert all(n in out for n in backbones.list_models())


def test_models_info_params_and_flops(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "info", "vit_base_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "86,567,656" in out and "3x224x224" in out
    assert "17.56G MACs" in out  # timm reports 17.6 GMACs for ViT-B/16 at 224


def test_models_info_unknown_name_is_user_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "info", "vit_base_patch16_22"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtk: error: unknown model 'vit_base_patch16_22'") and "vit_base_patch16_224" in err


def test_bench_backbones_rejects_bad_options(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "backbones", "--model", "resnet"]) == 2
    assert "--model must be all, vit or vit3d" in capsys.readouterr().err
    assert main(["bench", "backbones", "--steps", "0"]) == 2


def test_bench_pair_interleaves_and_takes_medians() -> None:
    import benchmarks.backbones_train_step as mod  # installed with the package
    calls = []
    fast = lambda: calls.append("a")  # noqa: E731
    slow = lambda: (calls.append("b"), time.sleep(0.01))  # noqa: E731
    t_a, t_b = mod.bench_pair(fast, slow, steps=4, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert t_a[0] < t_b[0] and t_b[0] >= 0.01  # wall clock includes the sleep
    assert len(t_a) == len(t_b) == 2

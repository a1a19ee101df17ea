"""``vtk`` entry point: info, help, and the error-to-exit-code mapping of cli.main."""

import pytest
import torch
import typer

from cli.apps import app
from cli.main import main
from engine.errors import RunError, UserError

__all__: list = []


@app.command("_test_user_error", hidden=True)
def _user_error() -> None:
    raise UserError("scan.nii.gz: truncated NIfTI\n(expected 884736 voxels, read 1000)")


@app.command("_test_run_error", hidden=True)
def _run_error() -> None:
    raise RunError("non-finite loss (nan) at step 3; last good checkpoint: none saved yet")


@app.command("_test_crash", hidden=True)
def _crash() -> None:
    raise KeyError("boom")


def test_info_prints_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__.split("+")[0] in out
    for name in ("python", "monai", "pytorchvideo", "decord", "torch threads", "bf16 supported", "precision auto"):
        assert name in out


@pytest.mark.parametrize("amx,native,says,auto", [(True, True, "native (AMX)", "bf16"),
                                                 (False, True, "native (avx512_bf16)", "bf16"),
                                                 (False, False, "emulated (no avx512_bf16 or AMX", "32")])
def test_info_says_whether_cpu_bf16_is_native(monkeypatch, amx, native, says, auto):
    import engine.context
    from cli.info import collect_info

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(engine.context, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(engine.context, "cpu_has_native_bf16", lambda: native)
    rows = dict(collect_info())
    assert rows["bf16 supported"].startswith(says) and rows["precision auto"] == auto


def test_help_lists_groups(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for group in ("seg", "video", "models", "data", "bench", "info"):
        assert f" {group} " in out
    assert "_test_crash" not in out


def test_user_error_exit_2_one_line(capsys):
    assert main(["_test_user_error"]) == 2
    err = capsys.readouterr().err
    assert err == "vtk: error: scan.nii.gz: truncated NIfTI (expected 884736 voxels, read 1000)\n"


def test_run_error_exit_1(capsys):
    assert main(["_test_run_error"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vtk: error: non-finite loss (nan) at step 3") and "Traceback" not in err


def test_unexpected_exception_exit_1(capsys):
    assert main(["_test_crash"]) == 1
    err = capsys.readouterr().err
    assert "KeyError" in err and "--debug" in err and "Traceback" not in err and err.count("\n") == 1


def test_debug_reraises():
    with pytest.raises(UserError, match="truncated NIfTI"):
        main(["--debug", "_test_user_error"])
    with pytest.raises(KeyError):
        main(["_test_crash", "--debug"])


# typer 0.29 vendors click (typer._click): its UsageError is not a click.ClickException and typer.Exit(code) is
# returned by app(), not raised. cli/main.py must handle both; the fix is in the engine helper's report.


@app.command("_test_exit3", hidden=True)
def _exit3() -> None:
    raise typer.Exit(3)


def test_unknown_command_is_usage_error(capsys):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "No such command" in err and "UsageError" not in err


def test_typer_exit_code_is_kept():
    assert main(["_test_exit3"]) == 3

"""``vtk`` entry point: wires the command groups and turns errors into one-line messages.

Exit codes: 0 success, 2 user error (bad path, bad option value, bad input file), 1 runtime failure.
``--debug`` (anywhere on the command line, or ``VTK_DEBUG=1``) re-raises with the full traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import List, Optional

import typer

try:  # typer >= 0.26 vendors click and does not install it; its usage errors are the vendored click's
    from typer._click.exceptions import ClickException
except ImportError:  # older typer runs on the click package
    from click import ClickException

from cli.apps import app
from engine.errors import VtkError, VtkWarning

__all__ = ["main"]

# Modules that add commands to the groups in cli.apps.
_COMMAND_MODULES = ("cli.info", "cli.models", "cli.seg", "cli.video", "cli.bench", "cli.quickstart")


def _register_commands() -> None:
    for mod in _COMMAND_MODULES:
        importlib.import_module(mod)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def _show_vtk_warnings() -> None:
    """Print vtk's own warnings (:class:`engine.errors.VtkWarning`) as one ``vtk: warning:`` line on stderr; every
    other warning keeps Python's format."""
    python_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if isinstance(category, type) and issubclass(category, VtkWarning):
            print(f"vtk: warning: {_one_line(message)}", file=file or sys.stderr, flush=True)
        else:
            python_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VTK_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    _register_commands()
    try:
        with warnings.catch_warnings():
            _show_vtk_warnings()
            rc = app(args=argv, prog_name="vtk", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("vtk: aborted", file=sys.stderr)
        return 130
    except ClickException as e:
        if debug:
            raise
        e.show()
        return 2
    except VtkError as e:
        if debug:
            raise
        print(f"vtk: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vtk: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every other failure is a runtime failure, exit 1
        if debug:
            raise
        print(f"vtk: error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

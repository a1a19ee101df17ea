"""Error types shared by every vtk package.

The CLI maps them to exit codes: :class:`UserError` -> 2 (bad path, bad option value, bad input file),
:class:`RunError` -> 1 (a runtime failure such as a non-finite loss). Messages are one line and name the
file or value at fault, e.g. ``UserError("scan.nii.gz: truncated gzip stream")``.
"""

__all__ = ["VtkError", "UserError", "RunError", "Interrupted", "VtkWarning"]


class VtkError(Exception):
    """Base class of all errors that vtk reports as a one-line message."""

    exit_code = 1


class UserError(VtkError, ValueError):
    """The user gave something wrong: a missing or unreadable file, a bad option value, bad data."""

    exit_code = 2


class RunError(VtkError, RuntimeError):
    """A run failed at runtime (non-finite loss, out of memory, a worker died)."""

    exit_code = 1


class Interrupted(VtkError):
    """A signal stopped the run after it saved; exits ``128 + signal`` (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class VtkWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one ``vtk: warning:`` line).

    Library code raises it with :func:`warnings.warn`, so Python callers can filter or escalate it as usual.
    """

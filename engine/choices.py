"""One checker for every enum-like argument: a bad value names the option, the choices and the closest match.

Example::

    >>> check_choice("--mode", "gausian", ("gaussian", "constant"))
    UserError: --mode: 'gausian' is not one of gaussian, constant; did you mean gaussian?

Library code passes ``error=ValueError`` (constructor arguments); the CLI keeps the default :class:`UserError`
(exit 2).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable, Iterable, Mapping, Optional, Set, Type, TypeVar

from engine.errors import UserError

__all__ = ["accepted_keywords", "check_choice", "check_keys", "close_matches_hint"]

T = TypeVar("T")


def close_matches_hint(value: object, choices: Iterable[object], n: int = 3) -> str:
    """``"; did you mean a, b?"`` for the choices close to ``value`` (as strings), else ``""``."""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def check_choice(option: str, value: T, choices: Iterable[T], *, error: Type[Exception] = UserError,
                 what: str = "value") -> T:
    """Return ``value`` when it is one of ``choices``, else raise ``error`` naming ``option`` and the choices.

    Args:
        option: The option or argument name shown first (``"--mode"``, ``"global_pool"``).
        value: What was given.
        choices: The valid values (strings, numbers, ...).
        error: Exception class raised (``UserError`` for CLI options, ``ValueError`` for constructor arguments).
        what: Noun used in the message (``"value"``, ``"model"``, ``"key"``).
    """
    choices = list(choices)
    if value in choices:
        return value
    listed = ", ".join(str(c) for c in choices)
    kind = "" if what == "value" else f"a known {what}, i.e. "
    raise error(f"{option}: {value!r} is not {kind}one of {listed}{close_matches_hint(value, choices)}")


def check_keys(option: str, given: Iterable[str], valid: Iterable[str], *,
               error: Type[Exception] = UserError) -> None:
    """Raise ``error`` for the first key of ``given`` not in ``valid``, listing the valid keys and the closest.

    Example::

        >>> check_keys("--model-arg", ["embed_dm"], ["embed_dim", "depth"])
        UserError: --model-arg: 'embed_dm' is not a known key, i.e. one of depth, embed_dim; did you mean embed_dim?
    """
    valid = sorted(set(valid))
    for key in given:
        if key not in valid:
            check_choice(option, key, valid, error=error, what="key")


def accepted_keywords(fn: Callable, exclude: Iterable[str] = ()) -> Optional[Set[str]]:
    """The keyword names ``fn`` accepts, or ``None`` when it takes ``**kwargs`` (any key may be valid)."""
    params: Mapping[str, inspect.Parameter] = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in params.items() if p.kind in kinds} - set(exclude)

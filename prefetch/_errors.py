"""The error set: one root, one class per way things go wrong.

Every message names what was wrong and where (stream, field, argument), what was
expected and what came, so that a user can act on it without a debugger.
"""

from __future__ import annotations


class PrefetchError(Exception):
    """Root of every error this library raises on purpose."""


class ArgumentError(PrefetchError, ValueError):
    """A constructor or function argument is invalid; the message names it."""


class DataError(PrefetchError, ValueError):
    """A sample is not data-like: not a dict or tuple of array-likes."""


class SchemaError(DataError):
    """A sample disagrees with the schema: a field missing, extra, or of the wrong dtype or shape."""


class EmptyStreamError(PrefetchError):
    """A stream that must restart forever yields nothing, so restarting it would spin."""


class MuxStarvedError(PrefetchError):
    """A mux has streams left that it can never read because their weight is zero."""


def add_note(exc: BaseException, note: str) -> None:
    """Attach context to an exception as it travels up, on every supported Python."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10 stores notes but does not print them
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]

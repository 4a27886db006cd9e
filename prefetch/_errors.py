"""The error set: one root, one class per way things go wrong.

Every message names what was wrong and where (stream, field, argument), what was
expected and what came, so that a user can act on it without a debugger.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any


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


def check_int(value: Any, minimum: int, what: str) -> int:
    """`value` as an int if it is an integer >= `minimum` (a bool is not), else an ArgumentError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ArgumentError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def add_note(exc: BaseException, note: str) -> None:
    """Attach context to an exception as it travels up, on every supported Python."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10 stores notes but does not print them
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


class PoolClosedError(PrefetchError):
    """The pool was closed (by you, by an error, or at exit) and cannot deliver batches."""


class SlotsExhaustedError(PrefetchError):
    """The trainer holds views of every shared-memory slot, so no batch can be filled."""


class SharedMemoryError(PrefetchError):
    """/dev/shm cannot hold the pool's slots; the message gives the sizes and how to make room."""


class PoolStartError(PrefetchError):
    """A pool could not start its processes (the system refused them); nothing is left running."""


class PoolTimeoutError(PrefetchError, TimeoutError):
    """No batch arrived within the pool's `timeout`."""


class WorkerError(PrefetchError):
    """User code (a stream or the transform) raised in a worker.

    Attributes:
        stream: repr of the stream that raised (None when unknown).
        worker: index of the worker process.
        traceback: the worker-side traceback, as text.
        original: the original exception when it could be pickled, else None.
    """

    def __init__(self, message: str, stream: str | None, worker: int, traceback: str,
                 original: BaseException | None) -> None:
        super().__init__(message)
        self.stream, self.worker, self.traceback, self.original = stream, worker, traceback, original

    def __str__(self) -> str:
        return f"{self.args[0]}\n\nTraceback in worker {self.worker}:\n{self.traceback}"

    def __reduce__(self) -> tuple:
        return (type(self), (self.args[0], self.stream, self.worker, self.traceback, self.original))


class WorkerDiedError(PrefetchError):
    """A worker or the mux process exited without being asked to.

    Attributes:
        process: "worker N" or "mux process".
        exitcode: the exit status, or minus the signal number that killed it.
    """

    def __init__(self, process: str, exitcode: int | None) -> None:
        if exitcode is None:
            how = "stopped answering"
        elif exitcode < 0:
            how = f"was killed by signal {-exitcode}"
        else:
            how = f"exited with status {exitcode}"
        super().__init__(f"{process} {how}")
        self.process, self.exitcode = process, exitcode

    def __reduce__(self) -> tuple:
        return (type(self), (self.process, self.exitcode))

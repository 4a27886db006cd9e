"""pescador's Streamer: prefetch's, plus the activation bookkeeping pescador exposes.

Entering a streamer (`with streamer as active:`) gives an activated copy holding the
running iterator in `stream_`; the original counts its live copies in
`active_count_` (`active`). Iterating enters and leaves such a copy, so `active`
says how many passes over the streamer are running.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from .. import _streamer
from .exceptions import PescadorError

__all__ = ["Streamer", "streamable"]


class Activations:
    """pescador's bookkeeping of running passes: `with x as running:` gives an activated copy of the
    original, which counts its live copies in `active_count_` (`active`)."""

    active_count_: int
    is_activated_copy: bool

    def _activated_copy(self) -> Any:
        raise NotImplementedError

    @property
    def active(self) -> int:
        """How many activated copies of this object are live."""
        return self.active_count_

    def __enter__(self) -> Any:
        if self.is_activated_copy:
            return self
        twin = self._activated_copy()
        self.active_count_ += 1
        return twin

    def __exit__(self, *exc: Any) -> bool:
        if not self.is_activated_copy:
            self.active_count_ -= 1
            if self.active_count_ < 0:
                raise PescadorError(f"{self!r}: more activations ended than started")
        return False


class Streamer(Activations, _streamer.Streamer):
    """A restartable stream of a generator function or an iterable, as in pescador 3.0."""

    def __init__(self, streamer: Any, *args: Any, **kwargs: Any) -> None:
        accepted = (Iterable, _streamer.Streamer, _streamer.StreamableFunction)
        if not (inspect.isgeneratorfunction(streamer) or isinstance(streamer, accepted)):
            raise PescadorError(f"Streamer needs a generator function or an iterable, got {streamer!r}")
        if not callable(streamer):
            args, kwargs = (), {}  # pescador ignores arguments of an iterable
        super().__init__(streamer, *args, **kwargs)
        self.active_count_ = 0
        self.stream_: Iterator[Any] | None = None

    @property
    def is_activated_copy(self) -> bool:
        return self.stream_ is not None

    def _activated_copy(self) -> Streamer:
        twin = copy.deepcopy(self)
        twin.stream_ = self._start()
        return twin

    def _iterate(self, max_iter: int | None) -> Iterator[Any]:
        if max_iter == 0:
            return
        with self as running:
            yield from itertools.islice(running.stream_, max_iter)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["stream_"] = None  # a running generator stays in its process
        return state


class _Streamable(_streamer.StreamableFunction):
    def __call__(self, *args: Any, **kwargs: Any) -> Streamer:
        return Streamer(self, *args, **kwargs)


def streamable(function: Any) -> Any:
    """Decorate a generator function so that calling it builds a Streamer (pescador's `streamable`)."""
    return _Streamable(function)

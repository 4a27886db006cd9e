"""Streamer: a restartable stream of samples, and the `streamable` decorator."""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._errors import ArgumentError, EmptyStreamError, check_int


def check_max_iter(max_iter: int | None) -> None:
    """Reject a `max_iter` that is neither None nor a non-negative integer."""
    if max_iter is not None:
        check_int(max_iter, 0, "max_iter")


class Streamer:
    """A stream that can be started again and again.

    `streamer` is a generator function (called with `args` and `kwargs` at every
    start), any callable returning an iterable, or an iterable such as a list.
    Each `iterate()` starts afresh, so one Streamer can be read many times, by
    many muxes, or shipped to a worker process (it pickles when its function and
    arguments do).
    """

    replicas = False
    """Whether a pool runs this stream as one replica per worker (see `replicated`)."""

    order_free = False
    """Whether a replicated stream yields the same sequence whatever the number of replicas.

    A pool can resume such a stream with a different worker count (volume loaders are)."""

    def __init__(self, streamer: Callable[..., Iterable[Any]] | Iterable[Any], *args: Any, **kwargs: Any) -> None:
        if not (callable(streamer) or isinstance(streamer, Iterable)):
            raise ArgumentError(
                f"Streamer needs a generator function, a callable returning an iterable, or an "
                f"iterable; got {type(streamer).__name__} {streamer!r}"
            )
        if (args or kwargs) and not callable(streamer):
            raise ArgumentError(f"arguments were given but {streamer!r} is not callable")
        self.streamer = streamer
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        target = self.streamer
        name = getattr(target, "__qualname__", None) or type(target).__name__
        parts = [name] + [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        text = ", ".join(parts)
        return f"Streamer({text if len(text) <= 80 else text[:77] + '...'})"

    def replicated(self) -> Streamer:
        """This stream, marked to run in a pool as one replica per worker.

        Use it for an endless random sampler, or a finite source that reads its own
        shard through `prefetch.worker_info()` (replica, num_replicas). A pool takes
        rows from the replicas in turn, a batch's worth at a time, so one stream with
        expensive samples keeps every worker busy. In process it is the stream itself.
        """
        twin = copy.copy(self)
        twin.replicas = True
        return twin

    def seek(self, position: int) -> Iterator[Any] | None:
        """A fresh pass over the stream that starts at sample `position`, or None if it cannot jump.

        Override it when a stream can skip ahead cheaply (to a file offset, say). A pool
        uses it to resume from a checkpoint and to restart a worker, instead of pulling
        and dropping `position` samples. It runs where the stream runs, with the same
        `worker_info()`, and must give exactly the samples a pass from the start would.
        """
        return None

    def _start(self) -> Iterator[Any]:
        """A fresh iterator over the stream."""
        target = self.streamer
        if isinstance(target, Streamer):
            return target.iterate()
        if callable(target):
            target = getattr(target, "function", target) if isinstance(target, StreamableFunction) else target
            produced = target(*self.args, **self.kwargs)
            if not isinstance(produced, Iterable):
                kind = type(produced).__name__
                raise ArgumentError(f"{self!r}: calling the streamer returned {kind}, not an iterable")
            return iter(produced)
        return iter(target)

    def iterate(self, max_iter: int | None = None) -> Iterator[Any]:
        """Start the stream afresh and yield at most `max_iter` samples.

        Exactly `max_iter` samples are pulled from the underlying generator, never
        one more, so a generator with side effects is advanced no further than read.
        """
        check_max_iter(max_iter)
        return self._iterate(max_iter)

    def _iterate(self, max_iter: int | None) -> Iterator[Any]:
        if max_iter == 0:
            return
        yield from itertools.islice(self._start(), max_iter)

    def cycle(self, max_iter: int | None = None) -> Iterator[Any]:
        """Yield forever (or `max_iter` samples), restarting the stream each time it ends.

        A pass that yields nothing raises EmptyStreamError instead of restarting forever.
        """
        check_max_iter(max_iter)
        return self._cycle(max_iter)

    def _cycle(self, max_iter: int | None) -> Iterator[Any]:
        count = 0
        while max_iter is None or count < max_iter:
            remaining = None if max_iter is None else max_iter - count
            before = count
            for item in self._iterate(remaining):
                yield item
                count += 1
            if count == before:
                raise EmptyStreamError(f"{self!r} yielded nothing, so cycling it would never produce a sample")

    def __call__(self, max_iter: int | None = None, cycle: bool = False) -> Iterator[Any]:
        """`cycle()` when `cycle` is true, else `iterate()`."""
        return self.cycle(max_iter) if cycle else self.iterate(max_iter)

    def __iter__(self) -> Iterator[Any]:
        return self.iterate()


class StreamableFunction:
    """A generator function that returns a Streamer when called; see `streamable`."""

    def __init__(self, function: Callable[..., Iterable[Any]]) -> None:
        self.function = function
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Streamer:
        return Streamer(self, *args, **kwargs)

    def __reduce__(self) -> str:
        return self.__qualname__


def streamable(function: Callable[..., Iterable[Any]]) -> StreamableFunction:
    """Decorate a generator function so that calling it builds a Streamer.

    The decorated function still pickles by name, so its Streamers run in workers.
    """
    return StreamableFunction(function)

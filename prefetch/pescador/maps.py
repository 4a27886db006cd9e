"""pescador's maps over streams of data: batching, tuples for frameworks, and stochastic caching."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .._buffer import _stack, buffer_stream
from .exceptions import DataError, PescadorError
from .util import get_rng

__all__ = ["buffer_stream", "cache", "keras_tuples", "tuples"]


def __stack_data(data: list[Any], axis: int | None) -> Any:
    """Stack a list of data objects field by field (pescador's private helper, which its tests call)."""
    return _stack(data, axis)


def tuples(stream: Iterable[Any], *keys: Any) -> Iterator[tuple[Any, ...]]:
    """Each data object of the stream as the tuple of its `keys`' values, in that order."""
    if not keys:
        raise PescadorError("tuples needs at least one key")
    for data in stream:
        try:
            yield tuple(data[key] for key in keys)
        except TypeError as exc:
            raise DataError(f"tuples: {data!r} is not a data object") from exc


def _keys(names: Any) -> tuple[list[Any], bool]:
    """(keys, whether a single key was given as a string)."""
    if isinstance(names, str):
        return [names], True
    return list(names or []), False


def keras_tuples(stream: Iterable[Any], inputs: Any = None, outputs: Any = None) -> Iterator[tuple[Any, Any]]:
    """Each data object as Keras's (x, y): an array for one key named as a string, a list for several, else None."""
    ins, one_in = _keys(inputs)
    outs, one_out = _keys(outputs)
    if not ins and not outs:
        raise PescadorError("keras_tuples needs at least one key in inputs or outputs")

    def pick(data: Any, keys: list[Any], single: bool) -> Any:
        if not keys:
            return None
        values = [data[key] for key in keys]
        return values[0] if single else values

    for data in stream:
        try:
            yield pick(data, ins, one_in), pick(data, outs, one_out)
        except TypeError as exc:
            raise DataError(f"keras_tuples: {data!r} is not a data object") from exc


def cache(stream: Iterable[Any], n_cache: int, prob: float = 0.5, random_state: Any = None) -> Iterator[Any]:
    """Yield new items with probability `prob`, else items seen before, from a cache of `n_cache` of them.

    The first `n_cache` items pass through in order and fill the cache; afterwards
    each new item replaces a random one. It ends when it needs a new item and the
    stream has none, so it yields at least every item of the stream.
    """
    if n_cache <= 0:
        raise PescadorError(f"cache: n_cache must be a positive number of items, got {n_cache!r}")
    if not 0 < prob <= 1:
        raise PescadorError(f"cache: prob must be in (0, 1], got {prob!r}")
    rng = get_rng(random_state)
    items = iter(stream)
    kept: list[Any] = []
    for item in items:
        kept.append(item)
        yield item
        if len(kept) == n_cache:
            break
    else:
        return  # the stream ended before the cache was full: every item went through once
    while True:
        if rng.uniform() < prob:
            try:
                item = next(items)
            except StopIteration:
                return
            kept[rng.randint(len(kept))] = item
            yield item
        else:
            yield kept[rng.randint(len(kept))]

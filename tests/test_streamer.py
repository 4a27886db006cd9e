"""Streamer and streamable: restartable streams."""

from __future__ import annotations

import copy
import pickle

import pytest

import prefetch
from prefetch import ArgumentError, EmptyStreamError, Streamer


def count_up(n):
    yield from range(n)


@prefetch.streamable
def decorated(n, offset=0):
    yield from range(offset, offset + n)


def test_iterate_restarts_the_generator_each_time():
    s = Streamer(count_up, 3)
    assert list(s.iterate()) == [0, 1, 2]
    assert list(s.iterate()) == [0, 1, 2]
    assert list(s) == [0, 1, 2]


def test_iterate_max_iter_pulls_exactly_n_items():
    """pescador pulls n+1 items for max_iter=n; a generator with side effects must see exactly n."""
    pulled = []

    def tracked():
        for i in range(100):
            pulled.append(i)
            yield i

    assert list(Streamer(tracked).iterate(max_iter=5)) == [0, 1, 2, 3, 4]
    assert pulled == [0, 1, 2, 3, 4]
    pulled.clear()
    assert list(Streamer(tracked).iterate(max_iter=0)) == []
    assert pulled == []


def test_cycle_restarts_and_respects_max_iter():
    s = Streamer(count_up, 3)
    assert list(s.cycle(max_iter=7)) == [0, 1, 2, 0, 1, 2, 0]
    assert list(s(max_iter=4, cycle=True)) == [0, 1, 2, 0]
    assert list(s(max_iter=2)) == [0, 1]


def test_cycle_over_an_empty_stream_raises_instead_of_spinning():
    with pytest.raises(EmptyStreamError, match="yielded nothing"):
        list(Streamer(count_up, 0).cycle())


def test_iterables_and_kwargs():
    assert list(Streamer("abc")) == ["a", "b", "c"]
    assert list(Streamer(decorated.function, 2, offset=5)) == [5, 6]


def test_streamable_returns_a_streamer_that_pickles():
    s = decorated(3, offset=1)
    assert isinstance(s, Streamer)
    assert list(s) == [1, 2, 3]
    clone = pickle.loads(pickle.dumps(s))
    assert list(clone) == [1, 2, 3]
    assert list(copy.deepcopy(s)) == [1, 2, 3]


def test_streamer_of_streamer_and_deepcopy_are_independent():
    inner = Streamer(count_up, 2)
    outer = Streamer(inner)
    assert list(outer) == [0, 1]
    assert list(copy.deepcopy(outer).cycle(max_iter=3)) == [0, 1, 0]


@pytest.mark.parametrize("bad", [None, 3, object()])
def test_rejects_what_cannot_stream(bad):
    with pytest.raises(ArgumentError, match="Streamer needs"):
        Streamer(bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_rejects_bad_max_iter(bad):
    with pytest.raises(ArgumentError, match="max_iter"):
        Streamer(count_up, 3).iterate(max_iter=bad)


def test_callable_that_returns_a_non_iterable_names_the_streamer():
    with pytest.raises(ArgumentError, match="not an iterable"):
        list(Streamer(lambda: 42))

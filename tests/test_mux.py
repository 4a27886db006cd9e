"""Muxes: pescador's documented behaviour, and the places where we deliberately differ.

Statistical checks use fixed seeds (so they cannot flake) and bounds of about five
standard deviations of the estimate, derived in each test from its sample count.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import pickle
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetch import (
    ArgumentError,
    ChainMux,
    EmptyStreamError,
    MuxStarvedError,
    RoundRobinMux,
    ShuffledMux,
    StochasticMux,
    Streamer,
)
from prefetch._policy import StochasticPolicy, jsonable


def forever(tag):
    """An endless stream of (tag, position since this start)."""
    for i in itertools.count():
        yield (tag, i)


def finite(tag, n):
    for i in range(n):
        yield (tag, i)


def endless(k):
    return [Streamer(forever, i) for i in range(k)]


def shares(items, k):
    counts = Counter(tag for tag, _ in items)
    return np.array([counts[i] for i in range(k)]) / len(items)


def episodes(items):
    """Lengths of runs that restart a stream (position 0) and count up without a break."""
    lengths, last = [], {}
    for tag, pos in items:
        if pos == 0:
            lengths.append(1)
        elif last.get(tag) == pos - 1:
            lengths[-1] += 1
        last[tag] = pos
    return lengths


# --- StochasticMux --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["with_replacement", "single_active"])
@pytest.mark.parametrize("dist", ["constant", "binomial", "poisson"])
def test_weights_are_the_long_run_shares(mode, dist):
    """weights 0.7/0.1/0.1/0.1 with n_active=2, rate=8 give those shares (pescador gives ~0.4/0.2/0.2/0.2).

    200,000 samples are ~25,000 activations at rate 8; a share of 0.1 estimated from them has a standard
    deviation of about sqrt(0.1 * 0.9 / 25,000) ~ 0.002 (a little more with budget variance), so 0.01 is ~5 sd.
    """
    w = [0.7, 0.1, 0.1, 0.1]
    mux = StochasticMux(endless(4), n_active=2, rate=8, weights=w, mode=mode, dist=dist, random_state=11)
    np.testing.assert_allclose(shares(list(mux(max_iter=200_000)), 4), w, atol=0.01)


def test_weights_with_all_streams_active_and_no_budget():
    """rate=None, n_active = number of streams: each stream is live once and rows follow the weights.

    60,000 samples: sd of a share near 0.5 is sqrt(0.25 / 60,000) ~ 0.002; 0.01 is ~5 sd.
    """
    w = [0.5, 0.3, 0.2]
    mux = StochasticMux(endless(3), n_active=3, rate=None, weights=w, random_state=5)
    np.testing.assert_allclose(shares(list(mux(max_iter=60_000)), 3), w, atol=0.01)


@pytest.mark.parametrize("dist", ["binomial", "poisson"])
def test_budgets_follow_the_rate(dist):
    """With one active stream, each activation runs for a budget whose mean is `rate`.

    ~5,000 episodes of mean 16 and sd <= 4 (Poisson(15) + 1): the mean's sd is ~0.06; 0.5 is ~8 sd.
    """
    mux = StochasticMux(endless(5), n_active=1, rate=16, dist=dist, random_state=2)
    lengths = episodes(mux(max_iter=80_000))
    assert abs(np.mean(lengths[:-1]) - 16) < 0.5


def test_constant_budget_is_exact():
    mux = StochasticMux(endless(3), n_active=1, rate=5, dist="constant", mode="single_active", random_state=0)
    lengths = episodes(mux(max_iter=1000))
    assert set(lengths[:-1]) == {5}


def test_single_active_never_holds_a_stream_twice():
    policy = StochasticPolicy(np.full(5, 0.2), 3, 4, "single_active", True, "poisson", np.random.default_rng(0))
    policy.start()
    for _ in range(2000):
        live = list(policy.live().values())
        assert len(set(live)) == len(live) == 3
        choices = policy.choose(64)
        for slot in policy.advance(choices):
            policy.ended(slot)


@pytest.mark.parametrize("mode", ["with_replacement", "single_active", "exhaustive"])
def test_a_policy_state_stays_as_taken_while_the_policy_goes_on(mode):
    """get_state shares the policy's arrays (no copies): every later step, an activation or a pruned stream, must
    leave a state taken earlier as it was, or a checkpoint (or the planner's rewind) would resume elsewhere."""
    policy = StochasticPolicy(np.arange(1.0, 9.0), 3, 4, mode, True, "poisson", np.random.default_rng(0))
    policy.start()
    taken = []
    for step in range(300):
        state = policy.get_state()
        taken.append((state, json.dumps(jsonable(state))))
        if step % 7 == 0 and policy.live():  # an activation that yields nothing: its stream is pruned
            policy.ended(next(iter(policy.live())))
            continue
        for slot in policy.advance(policy.choose(5)):
            policy.ended(slot)
        if not policy.live():
            break
    assert len(taken) >= 8
    assert all(json.dumps(jsonable(state)) == text for state, text in taken)
    restored = StochasticPolicy(np.arange(1.0, 9.0), 3, 4, mode, True, "poisson", np.random.default_rng(1))
    middle = taken[len(taken) // 2]
    restored.set_state(middle[0])
    assert json.dumps(jsonable(restored.get_state())) == middle[1]


def test_exhausted_streams_are_restarted_with_replacement():
    mux = StochasticMux([Streamer(finite, i, 3) for i in range(2)], n_active=2, rate=None, random_state=1)
    items = list(mux(max_iter=60))
    assert len(items) == 60
    assert {pos for _, pos in items} == {0, 1, 2}


@pytest.mark.parametrize("rate", [None, 2])
def test_exhaustive_reads_each_stream_once(rate):
    streams = [Streamer(finite, i, 10) for i in range(6)]
    items = list(StochasticMux(streams, n_active=2, rate=rate, mode="exhaustive", random_state=3))
    counts = Counter(tag for tag, _ in items)
    assert set(counts) == set(range(6))
    assert len(items) == len(set(items))
    if rate is None:
        assert len(items) == 60


def test_empty_streams_are_pruned():
    streams = [Streamer(finite, 0, 0), Streamer(forever, 1)]
    items = list(StochasticMux(streams, n_active=1, rate=3, random_state=0)(max_iter=300))
    assert {tag for tag, _ in items} == {1}


def test_all_empty_streams_end_the_mux_when_pruning():
    streams = [Streamer(finite, i, 0) for i in range(3)]
    assert list(StochasticMux(streams, n_active=2, rate=4, random_state=0)) == []


def test_all_empty_streams_without_pruning_raise_instead_of_spinning():
    streams = [Streamer(finite, i, 0) for i in range(3)]
    mux = StochasticMux(streams, n_active=2, rate=4, prune_empty_streams=False, random_state=0)
    with pytest.raises(EmptyStreamError, match="prune_empty_streams=False"):
        list(mux)


def test_remaining_zero_weight_streams_raise_instead_of_ending_silently():
    streams = [Streamer(finite, 0, 5), Streamer(finite, 1, 5)]
    mux = StochasticMux(streams, n_active=1, rate=None, weights=[1, 0], mode="exhaustive", random_state=0)
    with pytest.raises(MuxStarvedError, match=r"streams \[1\] still have data but weight 0"):
        list(mux)


def test_caller_weights_are_not_modified_and_integers_work():
    w = np.array([3, 1])
    mux = StochasticMux(endless(2), n_active=2, rate=None, weights=w, random_state=4)
    got = shares(list(mux(max_iter=20_000)), 2)
    np.testing.assert_array_equal(w, [3, 1])
    np.testing.assert_allclose(got, [0.75, 0.25], atol=0.015)  # sd ~0.003 at 20,000 samples


def test_max_iter_pulls_exactly_that_many_samples_from_the_leaves():
    pulled = []

    def tracked(tag):
        for i in itertools.count():
            pulled.append(tag)
            yield (tag, i)

    mux = StochasticMux([Streamer(tracked, t) for t in range(3)], n_active=2, rate=3, random_state=0)
    assert len(list(mux(max_iter=101))) == 101
    assert len(pulled) == 101


# --- determinism and random state ----------------------------------------------------------------


def make_muxes(random_state):
    return [
        StochasticMux(endless(4), 2, rate=5, random_state=random_state),
        ShuffledMux(endless(3), weights=[1, 2, 3], random_state=random_state),
        RoundRobinMux([Streamer(finite, i, 3) for i in range(3)], mode="permuted_cycle", random_state=random_state),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_same_seed_same_sequence_and_epochs_differ(index):
    a, b = make_muxes(7)[index], make_muxes(7)[index]
    first_a, first_b = list(a(max_iter=300)), list(b(max_iter=300))
    assert first_a == first_b
    assert list(a(max_iter=300)) == list(b(max_iter=300))
    if index != 2:
        assert list(a(max_iter=300)) != first_a, "a later activation replays the first one"


def test_pickled_mux_continues_the_same_seeded_sequence():
    mux = make_muxes(9)[0]
    clone = pickle.loads(pickle.dumps(mux))
    assert list(mux(max_iter=200)) == list(clone(max_iter=200))


def test_generator_and_random_state_objects_are_used_in_place():
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    assert list(make_muxes(g1)[0](max_iter=200)) == list(make_muxes(g2)[0](max_iter=200))
    r1, r2 = np.random.RandomState(3), np.random.RandomState(3)
    assert list(make_muxes(r1)[1](max_iter=200)) == list(make_muxes(r2)[1](max_iter=200))


def test_no_random_state_shares_no_hidden_state_across_copies():
    np.random.seed(0)
    mux = StochasticMux(endless(4), 2, rate=5)
    twin = copy.deepcopy(mux)
    np.random.seed(0)
    first = list(mux(max_iter=200))
    np.random.seed(0)
    assert list(twin(max_iter=200)) != first


# --- ShuffledMux, RoundRobinMux, ChainMux --------------------------------------------------------


def test_shuffled_mux_follows_weights_and_restarts_streams():
    """60,000 samples; sd of a share <= sqrt(0.25 / 60,000) ~ 0.002, bound 0.01."""
    mux = ShuffledMux([Streamer(finite, i, 7) for i in range(3)], weights=[0.2, 0.3, 0.5], random_state=1)
    items = list(mux(max_iter=60_000))
    np.testing.assert_allclose(shares(items, 3), [0.2, 0.3, 0.5], atol=0.01)
    assert max(pos for _, pos in items) == 6


def test_shuffled_mux_drops_empty_streams_and_ends_when_all_are_empty():
    mux = ShuffledMux([Streamer(finite, 0, 0), Streamer(forever, 1)], random_state=0)
    assert {tag for tag, _ in mux(max_iter=100)} == {1}
    assert list(ShuffledMux([Streamer(finite, i, 0) for i in range(2)])) == []


def test_round_robin_modes():
    streams = [Streamer("ab"), Streamer("cde"), Streamer("f")]
    assert "".join(RoundRobinMux(streams)) == "acfbde"
    assert "".join(RoundRobinMux(streams, mode="cycle")(max_iter=12)) == "acfbdeacfbde"
    permuted = "".join(RoundRobinMux(streams, mode="permuted_cycle", random_state=2)(max_iter=60))
    assert Counter(permuted) == Counter("acfbde" * 10)


def test_round_robin_cycle_over_empty_streams_raises():
    with pytest.raises(EmptyStreamError):
        list(RoundRobinMux([Streamer(""), Streamer([])], mode="cycle"))


def test_chain_modes_and_generated_streamers():
    streams = [Streamer("ab"), Streamer(""), Streamer("cd")]
    assert "".join(ChainMux(streams)) == "abcd"
    assert "".join(ChainMux(streams, mode="cycle")(max_iter=9)) == "abcdabcda"

    def letters():
        for ch in "xyz":
            yield Streamer(ch * 2)

    assert "".join(ChainMux(letters)) == "xxyyzz"
    assert "".join(ChainMux(letters, mode="cycle")(max_iter=8)) == "xxyyzzxx"


def test_chain_cycle_over_nothing_raises():
    with pytest.raises(EmptyStreamError):
        list(ChainMux([Streamer("")], mode="cycle"))


def test_muxes_nest_and_restart():
    inner = StochasticMux([Streamer(finite, i, 4) for i in range(2)], n_active=1, rate=None,
                          mode="exhaustive", random_state=0)
    outer = ChainMux([inner, Streamer([("c", 0)])])
    once = list(outer)
    assert len(once) == 9
    assert Counter(tag for tag, _ in once) == {0: 4, 1: 4, "c": 1}
    assert len(list(outer)) == 9


def test_errors_inside_a_stream_name_the_stream_and_the_mux():
    def broken():
        yield ("ok", 0)
        raise ValueError("bad record 17")

    mux = ChainMux([Streamer("a"), Streamer(broken)])
    with pytest.raises(ValueError, match="bad record 17") as info:
        list(mux)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "stream 1 (Streamer(" in notes
    assert "broken" in notes
    assert "ChainMux" in notes


# --- hypothesis invariants -------------------------------------------------------------------------

lengths = st.lists(st.integers(0, 12), min_size=1, max_size=6)


@given(lengths)
def test_chain_exhaustive_yields_every_sample_once_in_order(sizes):
    streams = [Streamer(finite, i, n) for i, n in enumerate(sizes)]
    assert list(ChainMux(streams)) == [(i, j) for i, n in enumerate(sizes) for j in range(n)]


@given(lengths)
def test_round_robin_exhaustive_keeps_each_stream_in_order(sizes):
    items = list(RoundRobinMux([Streamer(finite, i, n) for i, n in enumerate(sizes)]))
    assert sorted(items) == [(i, j) for i, n in enumerate(sizes) for j in range(n)]
    for i in range(len(sizes)):
        assert [p for t, p in items if t == i] == list(range(sizes[i]))


@settings(max_examples=60)
@given(lengths, st.integers(1, 6), st.integers(0, 2**31))
def test_stochastic_exhaustive_without_rate_yields_every_sample_once(sizes, n_active, seed):
    n_active = min(n_active, len(sizes))
    streams = [Streamer(finite, i, n) for i, n in enumerate(sizes)]
    items = list(StochasticMux(streams, n_active, rate=None, mode="exhaustive", random_state=seed))
    assert sorted(items) == [(i, j) for i, n in enumerate(sizes) for j in range(n)]


@settings(max_examples=60)
@given(st.integers(1, 5), st.floats(1, 20), st.sampled_from(["constant", "binomial", "poisson"]),
       st.integers(0, 500))
def test_stochastic_max_iter_is_exact(n_active, rate, dist, max_iter):
    mux = StochasticMux(endless(3), n_active, rate=rate, dist=dist, random_state=1)
    assert len(list(mux(max_iter=max_iter))) == max_iter


# --- invalid arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 0}, "rate must be None or a number >= 1"),
        ({"rate": -2}, "rate must be None or a number >= 1"),
        ({"rate": math.nan}, "rate must be"),
        ({"weights": [1, 2]}, "weights has 2 entries, but there are 3 streams"),
        ({"weights": [0, 0, 0]}, "weights are all zero"),
        ({"weights": [1, -1, 1]}, "weights must be >= 0"),
        ({"weights": [1, math.inf, 1]}, "weights must be finite"),
        ({"mode": "sometimes"}, "mode must be one of"),
        ({"dist": "gauss"}, "dist must be one of"),
        ({"n_active": 0}, "n_active must be an integer >= 1"),
        ({"n_active": 4, "mode": "single_active"}, "n_active=4 exceeds the 3 streams"),
        ({"n_active": 4, "mode": "exhaustive"}, "n_active=4 exceeds the 3 streams"),
        ({"random_state": "seed"}, "random_state must be"),
        ({"random_state": -1}, "random_state must be"),
    ],
)
def test_stochastic_mux_rejects_invalid_arguments(kwargs, match):
    args = {"n_active": 2, "rate": 4, **kwargs}
    with pytest.raises(ArgumentError, match=match):
        StochasticMux(endless(3), **args)


def test_other_muxes_reject_invalid_arguments():
    with pytest.raises(ArgumentError, match="empty"):
        ShuffledMux([])
    with pytest.raises(ArgumentError, match="weights"):
        ShuffledMux(endless(2), weights=[1])
    with pytest.raises(ArgumentError, match="mode"):
        RoundRobinMux(endless(2), mode="exhaustve")
    with pytest.raises(ArgumentError, match="mode"):
        ChainMux(endless(2), mode="permuted_cycle")


def test_n_active_above_stream_count_is_fine_with_replacement():
    mux = StochasticMux(endless(2), n_active=5, rate=3, random_state=0)
    assert len(list(mux(max_iter=50))) == 50


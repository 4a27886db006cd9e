"""The walk and its journal: blocks drawn ahead never change a walk, and a rewind or a snapshot lands exactly."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetch import ShuffledMux, StochasticMux, Streamer
from prefetch._errors import PrefetchError
from prefetch._policy import _cut_at_budget
from prefetch._walk import BLOCK, SPAN


def walk_of(n_streams: int, n_active: int, rate: float, mode: str, dist: str, seed: int):
    mux = StochasticMux([Streamer(range, 1) for _ in range(n_streams)], n_active=n_active, rate=rate,
                        mode=mode, dist=dist, random_state=seed)
    return mux._walk(None, saving=True)


def drive(walk, events, ahead: int, reweight_at: int | None = None):
    """The walk's record: activations, and per block (choices, delivered, exhausted, ended, activations).

    `events` decides each block's delivery (full, or a stream running out at some row);
    `ahead` blocks are drawn ahead before each block; after block `reweight_at` the
    weights change (the planner rewinds when they arrive, during that block).
    """
    record = [[(a.slot, a.child, a.budget) for a in walk.start()]]
    for k, (full, cut) in enumerate(events):
        while len(walk.ahead) < ahead and walk.extend() is not None:
            pass
        choices = walk.draw()
        if choices is None:
            break
        if k == reweight_at:  # new weights arrive during the block, for the rows after it
            walk.rewind()
        delivered, exhausted = len(choices), None
        if not full:
            delivered = cut % len(choices)
            exhausted = int(choices[delivered])
        ended, activations = walk.finish(delivered, exhausted)
        if k == reweight_at:
            walk.policy.set_weights(np.arange(1, len(walk.policy.weights) + 1, dtype=float))
        record.append((choices.tolist(), delivered, exhausted, ended,
                       [(a.slot, a.child, a.budget) for a in activations]))
    return record


modes = st.sampled_from(["with_replacement", "single_active", "exhaustive"])
dists = st.sampled_from(["constant", "binomial", "poisson"])
events = st.lists(st.tuples(st.booleans() | st.just(True), st.integers(0, 10**6)), max_size=40)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 8), st.integers(1, 5), st.floats(1, 80), modes, dists, st.integers(0, 2**31), events,
       st.integers(1, 12))
def test_blocks_drawn_ahead_never_change_the_walk(n_streams, n_active, rate, mode, dist, seed, events, ahead):
    n_active = n_active if mode == "with_replacement" else min(n_active, n_streams)
    plain = drive(walk_of(n_streams, n_active, rate, mode, dist, seed), events, ahead=0)
    journaled = drive(walk_of(n_streams, n_active, rate, mode, dist, seed), events, ahead=ahead)
    assert journaled == plain


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.floats(2, 40), st.integers(0, 2**31), st.integers(1, 20), st.integers(1, 12))
def test_a_rewind_before_reweighting_changes_only_what_follows(n_streams, rate, seed, at, ahead):
    full = [(True, 0)] * 30
    plain = drive(walk_of(n_streams, 2, rate, "with_replacement", "binomial", seed), full, 0, reweight_at=at)
    journaled = drive(walk_of(n_streams, 2, rate, "with_replacement", "binomial", seed), full, ahead,
                      reweight_at=at)
    assert journaled == plain


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.floats(1, 40), st.integers(0, 2**31), st.integers(0, 15), st.integers(0, 12),
       st.booleans())
def test_a_state_taken_while_replaying_restores_the_same_walk(n_streams, rate, seed, depth, ahead, mid_block):
    first = walk_of(n_streams, 3, rate, "with_replacement", "poisson", seed)
    drive(first, [(True, 0)] * depth, ahead)
    while len(first.ahead) < ahead and first.extend() is not None:
        pass
    if mid_block:
        first.draw()
    state = first.get_state()
    second = walk_of(n_streams, 3, rate, "with_replacement", "poisson", seed)
    second.set_state(state)
    if not mid_block:
        first.draw()
        second.draw()
    assert second.choices.tolist() == first.choices.tolist()
    first.finish(len(first.choices), None)
    second.finish(len(second.choices), None)
    rest = [(True, 0)] * 10
    assert drive_on(first, rest) == drive_on(second, rest)


def drive_on(walk, events):
    out = []
    for _ in events:
        choices = walk.draw()
        if choices is None:
            break
        ended, activations = walk.finish(len(choices), None)
        out.append((choices.tolist(), ended, [(a.slot, a.child, a.budget) for a in activations]))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=300),
       st.lists(st.one_of(st.integers(1, 60), st.just(None)), min_size=8, max_size=8))
def test_a_block_is_cut_at_the_first_row_that_spends_a_budget(choices, budgets):
    budget = np.array([np.inf if b is None else b for b in budgets], dtype=float)
    left, expected = list(budget), len(choices)
    for row, slot in enumerate(choices):
        left[slot] -= 1
        if left[slot] <= 0:
            expected = row + 1
            break
    assert _cut_at_budget(np.array(choices), budget).tolist() == choices[:expected]


@pytest.mark.parametrize("case, digest", [
    ((30, 16, 64.0, "with_replacement", "binomial", 7), "34efb5b298982a2d"),
    ((5, 2, 10.0, "single_active", "poisson", 8), "aa77aa6487df470b"),
    ((6, 3, 20.0, "exhaustive", "constant", 9), "1aae562b1ffe8b7c"),
    ((3, 3, None, "with_replacement", "binomial", 10), "1f901b3f54956007"),
])
def test_a_seeded_walk_draws_what_earlier_versions_drew(case, digest):
    """A saved state resumes with the same rows in the next version only if the policy draws as it did.

    The digests were taken before the policy's arithmetic moved from numpy calls to
    Python floats (same values, same generator calls); a change that alters a draw
    fails here. (A numpy release that changed its generators' streams would too, and
    checkpoints would then not carry across that upgrade either.)
    """
    events = [(i % 7 != 3, i * 37) for i in range(60)]
    record = drive(walk_of(*case), events, ahead=2)
    assert hashlib.sha256(repr(record).encode()).hexdigest()[:16] == digest


def drive_streams(walk, lengths, ahead: int, foresee: bool, blocks: int = 40):
    """Drive the walk as a planner would over streams of these lengths (None: endless), each activation
    starting its stream afresh: (record, blocks replayed as foreseen). With `foresee`, blocks drawn ahead
    end where a stream of known length runs out."""
    policy = walk.policy

    def left(slot):
        n = lengths[policy.child[slot]]
        return math.inf if n is None else n - policy.produced[slot]

    child, made = {}, {}
    started = walk.start()
    for a in started:
        child[a.slot], made[a.slot] = a.child, 0
    record, foreseen = [[(a.slot, a.child, a.budget) for a in started]], 0
    for _ in range(blocks):
        while len(walk.ahead) < ahead and walk.extend(left if foresee else None) is not None:
            pass
        choices = walk.draw()
        if choices is None:
            break
        delivered, exhausted, count = len(choices), None, dict(made)
        for row, slot in enumerate(choices.tolist()):
            n = lengths[child[slot]]
            if n is not None and count[slot] >= n:
                delivered, exhausted = row, slot
                break
            count[slot] += 1
        ended, activations = walk.finish(delivered, exhausted)
        foreseen += walk.foreseen is not None
        made = count
        for a in activations:
            child[a.slot], made[a.slot] = a.child, 0
        record.append((choices.tolist(), delivered, exhausted, ended,
                       [(a.slot, a.child, a.budget) for a in activations]))
    return record, foreseen


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 30), st.just(None)), min_size=1, max_size=6), st.integers(1, 4),
       st.floats(1, 60), st.integers(0, 2**31), st.integers(1, 10))
def test_blocks_drawn_ahead_to_a_foreseen_end_are_the_blocks_the_walk_meets(lengths, n_active, rate, seed, ahead):
    """A stream's end, foreseen from its length, ends the block drawn ahead where the planner will meet it:
    the walk is the same as without drawing ahead, and every block it replays plays out as drawn."""
    def walk():
        mux = StochasticMux([Streamer(range, 1) for _ in lengths], n_active=n_active, rate=rate, random_state=seed)
        return mux._walk(None, saving=True)

    try:
        plain, _ = drive_streams(walk(), lengths, 0, foresee=False)
    except PrefetchError:
        return  # every stream empty: the walk raises, with or without a look-ahead
    ahead_record, foreseen = drive_streams(walk(), lengths, ahead, foresee=True)
    blind_record, _ = drive_streams(walk(), lengths, ahead, foresee=False)
    assert ahead_record == plain == blind_record
    assert foreseen == len(plain) - 1, "a block drawn ahead to a foreseen end went otherwise"


def drive_rows(make, lengths, rows: int, arrive: int | None, resume_at: int | None):
    """Drive a walk row by row over streams of these lengths (None: endless), as the pool's planner does:
    the child of each delivered row, and each stream's end (row, child).

    New weights arrive when `arrive` rows are delivered, to apply from a block later
    (the margin `Pool.set_weights` leaves): the walk rewinds and is cut there, and
    draws are capped until then. At row `resume_at` the walk is saved and a new one
    continues from its state, at the same row of the same block.
    """
    walk, out = make(), []
    child, made, reweight_at, policy_weights = {}, {}, None, None

    def launch(activations):
        for a in activations:
            child[a.slot], made[a.slot] = a.child, 0

    def cap(n):
        return n if reweight_at is None else max(1, min(n, reweight_at - len(out)))

    launch(walk.start())
    pos, choices = 0, None
    while len(out) < rows:
        if choices is None:
            if reweight_at is not None and len(out) == reweight_at:
                walk.set_weights(policy_weights)
                reweight_at = None
            choices = walk.draw(cap)
            if choices is None:
                break
            pos = 0
        if arrive is not None and len(out) == arrive:
            arrive, reweight_at = None, len(out) + BLOCK
            policy_weights = np.arange(len(walk.policy.weights), 0, -1, dtype=float)
            walk.rewind()
            walk.cut(pos + BLOCK)
            choices = walk.choices
        if resume_at is not None and len(out) == resume_at:
            resume_at, state = None, walk.get_state()
            walk = make()
            walk.set_state(state)
            choices = walk.choices
        slot = int(choices[pos])
        n = lengths[child[slot]]
        if n is not None and made[slot] >= n:  # the stream in `slot` ends at this row
            out.append(("end", child[slot]))
            launch(walk.finish(pos, slot)[1])
            choices = None
            continue
        made[slot] += 1
        out.append(child[slot])
        pos += 1
        if pos == len(choices):
            launch(walk.finish(pos, None)[1])
            choices = None
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 700), st.just(None)), min_size=1, max_size=5), st.integers(1, 4),
       st.sampled_from(["with_replacement", "single_active", "exhaustive", "shuffled"]), st.integers(0, 2**31),
       st.one_of(st.none(), st.integers(0, 3000)), st.one_of(st.none(), st.integers(0, 3000)))
def test_a_span_draws_the_rows_that_blocks_drawn_one_at_a_time_draw(lengths, n_active, mode, seed, arrive,
                                                                     resume_at):
    """The planner draws steady policies SPAN blocks at a time: the same rows in the same order, whether a
    stream ends inside a span, new weights cut it, or a state taken inside it is restored."""
    def make(span):
        def walk():
            streams = [Streamer(range, 1) for _ in lengths]
            if mode == "shuffled":
                mux = ShuffledMux(streams, random_state=seed)
            else:
                mux = StochasticMux(streams, n_active=n_active, rate=None, mode=mode, random_state=seed)
            return mux._walk(None, saving=True, span=span)
        return walk

    try:
        one = drive_rows(make(1), lengths, 4000, arrive, resume_at)
    except PrefetchError:
        return  # every stream empty: the walk raises, whatever its span
    assert make(SPAN)().most == SPAN * BLOCK
    assert drive_rows(make(SPAN), lengths, 4000, arrive, resume_at) == one


def test_a_span_grows_while_draws_play_out_and_falls_back_to_a_block_at_an_early_end():
    """Streams that end often would waste most of a long span (drawn, then put back): a walk draws one block
    after an early end, and doubles its draw after each that played out whole, up to SPAN blocks."""
    mux = StochasticMux([Streamer(range, 1) for _ in range(3)], n_active=3, rate=None, random_state=4)
    walk = mux._walk(None, saving=True, span=SPAN)
    walk.start()
    sizes = []
    for _ in range(5):
        sizes.append(len(walk.draw()))
        walk.finish(sizes[-1], None)
    assert sizes == [BLOCK, 2 * BLOCK, 4 * BLOCK, SPAN * BLOCK, SPAN * BLOCK]
    choices = walk.draw()
    walk.finish(10, int(choices[10]))  # a stream ran out 10 rows in
    assert len(walk.draw()) == BLOCK

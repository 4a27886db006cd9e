"""The planner, without sockets or processes: it never blocks, its look-ahead never changes a batch, and it resumes."""

from __future__ import annotations

import json

import pytest

from prefetch import StochasticMux, Streamer
from prefetch._messages import Open, Want
from prefetch._muxproc.instances import InstanceTable
from prefetch._muxproc.planner import Leaves, Planner
from prefetch._policy import jsonable


def endless():
    yield from iter(int, 1)


def make(lengths, rate=8, n_active=2, lookahead=True, workers=2):
    """A planner over a StochasticMux of streams of these lengths (None: endless), and its outbox."""
    streams = [Streamer(endless) if n is None else Streamer(range(n)) for n in lengths]
    mux = StochasticMux(streams, n_active=n_active, rate=rate, random_state=5)
    sent = []
    table = InstanceTable(lambda worker, message: sent.append((worker, message)), workers, 11, 0, 64)
    planner = Planner(mux, Leaves(streams, [str(i) for i in range(len(streams))]), table,
                      16, "partial", 64 if lookahead else 0, [])
    if not lookahead:
        planner.lookahead.activations_ahead = 0
    return planner, sent, lengths


def serve(planner, lengths):
    """Every open instance reports all its samples ready, as a worker would once it made them."""
    reports = []
    for iid, inst in planner.instances.instances.items():
        n = lengths[inst.key]
        total = min(x for x in (inst.budget, n, inst.assigned + 10**6) if x is not None)
        reports.append([iid, total, (n is not None and total == n) or total == inst.budget])
    planner.instances.on_avail(reports)


def plans(planner, lengths, count):
    """Each batch as the (stream, activation) of each row: what decides its samples (rows of one instance take
    its samples in row order), however planning split the rows into parts while it waited."""
    out = []
    while len(out) < count and planner.running():
        plan = planner.next_batch()
        if plan is None:
            serve(planner, lengths)
            continue
        rows = [None] * plan.rows
        for inst, part in plan.parts:
            for row in part.tolist():
                rows[row] = (inst.key, inst.activation)
        out.append(rows)
    return out


def test_planning_never_blocks_it_asks_for_samples_and_says_it_waits():
    planner, sent, lengths = make([None, None, None])
    assert planner.running()
    assert planner.next_batch() is None
    assert any(isinstance(message, Open) for _, message in sent)
    assert any(isinstance(message, Want) for _, message in sent)
    serve(planner, lengths)
    plan = planner.next_batch()
    assert plan is not None and plan.rows == 16


def test_each_wait_doubles_the_window_a_worker_keeps_ready_up_to_a_slots_worth():
    sent = []
    table = InstanceTable(lambda worker, message: sent.append(message), 2, 11, 0, 512)
    other = table.open(0, 0, None, "a", None, None, 0, 0)  # a second instance: a share of the rows each
    inst = table.open(1, 1, None, "b", None, None, 0, 1)
    first = inst.window
    assert first < 512
    windows = []
    for step in range(1, 6):
        assert inst.available(step * 10) == 0
        windows.append(sent[-1].window)
    assert windows == [min(first * 2 ** k, 512) for k in range(1, 6)] and windows[-1] == 512
    table.on_avail([[inst.iid, 70, False]])
    sent.clear()
    assert inst.available(70) == 70 and sent == []  # no wait, no growth
    budgeted = table.open(2, 2, None, "c", 40, None, 0, 2)
    assert budgeted.available(30) == 0 and sent[-1].window == budgeted.window >= 40  # its whole budget already
    assert other.window == first * 2  # opened first, with a larger share


@pytest.mark.parametrize("lengths", [[None, None, None], [5, 40, 3, None], [7, 2, 30]])
def test_the_lookahead_never_changes_a_batch(lengths):
    ahead, _, _ = make(lengths)
    plain, _, _ = make(lengths, lookahead=False)
    assert plans(ahead, lengths, 40) == plans(plain, lengths, 40)
    assert ahead.lookahead.hits > 0 and plain.lookahead.hits == 0


def test_until_the_first_batch_is_planned_the_lookahead_opens_only_what_it_needs():
    planner, sent, lengths = make([None, None, None], rate=1000, n_active=1)

    def opened():
        return sum(isinstance(message, Open) for _, message in sent)

    assert planner.running() and planner.next_batch() is None
    assert opened() <= 2  # the first activation, and the one its block ends with
    serve(planner, lengths)
    assert planner.next_batch() is not None
    assert opened() >= 1 + planner.lookahead.activations_ahead


def test_endless_streams_are_foreseen_every_time_and_early_ends_waste_only_opened_instances():
    endless_planner, _, lengths = make([None, None, None])
    plans(endless_planner, lengths, 60)
    assert endless_planner.lookahead.misses == 0
    finite_planner, _, lengths = make([3, 4, 2, 5])
    plans(finite_planner, lengths, 60)
    assert finite_planner.lookahead.misses > 0


def test_activations_of_one_stream_are_spread_over_the_workers():
    planner, sent, lengths = make([None], n_active=1, rate=4, workers=3)
    plans(planner, lengths, 10)
    workers = [worker for worker, message in sent if isinstance(message, Open)]
    assert set(workers) == {0, 1, 2}


@pytest.mark.parametrize("depth", [0, 1, 7, 23])
def test_a_restored_snapshot_plans_the_same_next_batches(depth):
    lengths = [None, 50, None, 9]
    first, _, _ = make(lengths)
    plans(first, lengths, depth)
    state = json.loads(json.dumps(jsonable(first.snapshot())))
    expected = plans(first, lengths, 10)
    second, _, _ = make(lengths)
    second.restore(state)
    assert plans(second, lengths, 10) == expected


@pytest.mark.parametrize("lengths", [[None, None, None], [5, 40, 3, None]])
def test_a_reweighting_lands_on_its_batch_whatever_was_drawn_ahead(lengths):
    runs = []
    for lookahead in (True, False):
        planner, _, _ = make(lengths, lookahead=lookahead)
        head = plans(planner, lengths, 6)
        planner.add_weights(9, [1.0, 0.0, 0.0, 5.0][:len(lengths)])
        runs.append((head, plans(planner, lengths, 30)))
    assert runs[0] == runs[1]
    after = [key for batch in runs[0][1][3:] for key, _ in batch]
    assert 1 not in after and 2 not in after, "weight 0 streams were drawn after the reweighting"



def test_past_the_first_batch_the_planner_never_asks_again_for_what_the_lookahead_opened():
    """Such an OPEN asks for the activation's whole budget (its window holds it): the planner waits for the
    worker's news rather than chase it with a WANT, which would make that news urgent (in `mux-rate` a WANT
    and an AVAIL per activation, a third more CPU outside user code)."""
    planner, sent, lengths = make([None, None, None], rate=8, n_active=2)
    plans(planner, lengths, 1)
    assert any(isinstance(message, Want) for _, message in sent), "the first batch's activations are asked for"
    first = {message.iid for _, message in sent if isinstance(message, Open)}
    sent.clear()
    plans(planner, lengths, 30)
    opened = {message.iid for _, message in sent if isinstance(message, Open)}
    asked = {message.iid for _, message in sent if isinstance(message, Want)}
    assert len(opened) > 10 and planner.lookahead.hits > 10
    assert asked <= first, "an activation opened ahead was asked for again"


@pytest.mark.parametrize(("lengths", "hits"), [([3, 4, 2, 5], 500), ([3, 4, 2, 5, None, None], 100)])
def test_streams_that_end_before_their_budget_are_foreseen_to_end_there_again(lengths, hits):
    """Every end of a stream shorter than the rate sent the walk back and closed what was opened past it: with a
    deep look-ahead that was most of the pool's work (58,117 activations opened in vain for 200 batches of four
    such streams; a pool of 30 ran at 1.2k samples/s). Each activation starts its stream afresh, so once one
    has ended, the look-ahead draws its blocks to that end, as the planner meets it; and once some stream
    has ended early, a stream not yet seen to end stops it (each first end would be a surprise)."""
    streams = [Streamer(endless) if n is None else Streamer(range(n)) for n in lengths]
    mux = StochasticMux(streams, n_active=2, rate=64, random_state=5)
    sent = []
    table = InstanceTable(lambda worker, message: sent.append(message), 2, 11, 0, 4096)
    planner = Planner(mux, Leaves(streams, [str(i) for i in range(len(streams))]), table, 16, "partial", 4096, [])
    plain, _, _ = make(lengths, rate=64, n_active=2, lookahead=False)
    windows = []
    window = planner._window
    planner._window = lambda want: windows.append(want) or window(want)
    assert plans(planner, lengths, 200) == plans(plain, lengths, 200)
    # a window goes on past each end it foresaw once the instance has ended there: not one window per end
    assert len(windows) < 2 * 200, f"{len(windows)} windows for 200 batches of ~4 stream ends each"
    assert planner.lookahead.lengths == {k: n for k, n in enumerate(lengths) if n is not None}
    assert planner.lookahead.short == set()
    assert planner.lookahead.hits > hits
    assert planner.lookahead.misses <= 4, "only the first early end is a surprise: then unseen streams stop it"
    assert sum(isinstance(message, Open) for message in sent) < 1500


def test_a_stream_whose_ends_move_stops_the_lookahead():
    planner, _, _ = make([None, None, None])
    table = planner.instances
    first, second = (table.open(0, 0, None, "a", 64, None, 0, 0) for _ in range(2))
    table.on_avail([[first.iid, 7, True], [second.iid, 9, True]])
    planner.lookahead.ended_early(first)
    assert planner.lookahead.lengths == {0: 7} and planner.lookahead.short == set()
    planner.lookahead.ended_early(second)
    assert planner.lookahead.short == {0}
    assert planner.running()
    planner.walk.policy.child[0] = 0
    assert planner.lookahead._unforeseeable(planner.walk)


def test_streams_that_never_end_early_are_foreseen_from_the_start():
    """Until some stream ends before its budget, every stream is taken for one that does not: a mux of endless
    streams (as `mux-rate`) has its look-ahead from its first batch on."""
    planner, _, lengths = make([None, None, None], rate=8, n_active=2)
    plans(planner, lengths, 3)
    assert planner.lookahead.lengths == {} and not planner.lookahead._unforeseeable(planner.walk)
    assert planner.lookahead.opened > 0


@pytest.mark.parametrize(("rate", "lead"), [(None, 16), (None, 17), (None, 40), (None, 100), (8, 16), (8, 33)])
@pytest.mark.parametrize("arrive", [3, 50, 120])
@pytest.mark.parametrize("lengths", [[None, None, None, None], [None, 700, None, 90]])
def test_new_weights_start_at_their_batch_even_inside_a_span_drawn_before_them(rate, lead, arrive, lengths):
    """Weights for batch `at` reach the planner at least a block (256 rows, 16 batches here) before that
    batch's first row (Pool.set_weights's margin), but a span drawn before them (the planner draws `rate=None`
    muxes up to eight blocks at a time) may reach past it. They start exactly at batch `at`: the plans are
    those of a planner that knew of them from the start and capped every draw there."""
    streams = [Streamer(endless) if n is None else Streamer(range(n)) for n in lengths]

    def planner(history):
        mux = StochasticMux(streams, n_active=3, rate=rate, weights=[1, 2, 3, 4], random_state=9)
        table = InstanceTable(lambda worker, message: None, 2, 11, 0, 64)
        return Planner(mux, Leaves(streams, [str(i) for i in range(len(streams))]), table, 16, "partial", 64,
                       history)

    at, weights = arrive + lead, [4.0, 0.0, 1.0, 1.0]
    told = planner([])
    before = plans(told, lengths, arrive)
    told.add_weights(at, weights)
    after = plans(told, lengths, lead + 20)
    assert before + after == plans(planner([[at, weights]]), lengths, arrive + lead + 20)
    assert all((stream, activation) != (1, 0) for row in after[lead:] for stream, activation in row), \
        "a row of stream 1 (weight 0 from batch `at`) in the activation that was live when the weights came"

"""The worker links' flush pacing, on a clock the test moves (no sockets)."""

from __future__ import annotations

from prefetch._muxproc.links import FLUSH_INTERVAL, FLUSH_SHARE, FlushPacer


def test_a_long_planning_round_flushes_as_it_goes_but_spends_at_most_a_fifth_of_its_time_flushing():
    now = [100.0]
    pacer = FlushPacer(clock=lambda: now[0])
    assert pacer.due()  # nothing went out yet
    pacer.flushed(now[0])
    now[0] += 0.9 * FLUSH_INTERVAL
    assert not pacer.due()  # batches planned within the interval wait for the next flush
    now[0] += 0.2 * FLUSH_INTERVAL
    assert pacer.due()
    started = now[0]
    now[0] += 0.004  # a flush to many workers took 4 ms
    pacer.flushed(started)
    now[0] += 0.99 * 0.004 / FLUSH_SHARE
    assert not pacer.due()
    now[0] += 0.02 * 0.004 / FLUSH_SHARE
    assert pacer.due()

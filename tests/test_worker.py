"""The worker's two threads, driven directly: when the producer wakes the writer, and when the writer reports
(a real socket pair stands for the mux process)."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import zmq

from prefetch import Streamer, _worker
from prefetch._messages import Open


def slow_samples(seconds):
    """Endless samples, each taking `seconds` to make: a stream that keeps the producer in long runs."""
    i = 0
    while True:
        time.sleep(seconds)
        yield {"x": np.float32(i)}
        i += 1


@pytest.fixture
def producer():
    """A producer over one slow instance that wants far more samples than one production round makes."""
    woken, wake = socket.socketpair()
    wake.setblocking(False)
    woken.setblocking(False)
    config = _worker.WorkerConfig(0, 1, "ipc://unused", [Streamer(slow_samples, 0.003)], None, "raise",
                                  os.getpid())
    made = _worker._Producer(config, {}, wake)
    made.handle("open", Open(0, 0, 0, 1, None, 1, 0, 10_000, None, 0))
    made.wakes = lambda: len(_drain(woken))
    made.wakes()
    yield made
    woken.close()
    wake.close()


def _drain(sock):
    try:
        return sock.recv(4096)
    except BlockingIOError:
        return b""


def test_a_producer_in_a_long_run_never_wakes_the_writer_for_samples_nobody_waits_for(producer):
    """Rounds end every 2 ms while a slow stream has more to make; waking the writer after each one cost the
    producer a GIL hand-over each time (a sixth of a slow stream's time). The writer looks by itself, every
    NEWS_SECONDS while the producer has work (see the writer's tests below)."""
    for _ in range(5):
        producer.produce_round()
    assert producer.instances[0].produced >= 5
    assert producer.queue, "the instance still has samples to make"
    assert producer.wakes() == 0


def test_samples_someone_waits_for_wake_the_writer_as_soon_as_they_are_made(producer):
    inst = producer.instances[0]
    producer.handle("want", 0, inst.produced + 2, 0)  # the planner waits for two more samples
    producer.wakes()
    producer.produce_round()
    if inst.produced < producer.awaited.get(0, 0):  # the round ended before the second sample
        assert producer.wakes() == 0
        producer.produce_round()
    assert producer.wakes() == 1
    assert producer.awaited == {}
    producer.produce_round()
    assert producer.wakes() == 0, "nobody waits any more"


def test_a_closed_instance_is_no_longer_waited_for(producer):
    producer.handle("want", 0, producer.instances[0].produced + 100, 0)
    producer.handle("close", [0])
    assert producer.awaited == {}


@pytest.fixture
def budgeted():
    """A producer with no instance yet over a finite stream, and its wake socket."""
    woken, wake = socket.socketpair()
    wake.setblocking(False)
    woken.setblocking(False)
    config = _worker.WorkerConfig(0, 1, "ipc://unused", [Streamer(range, 50)], None, "raise", os.getpid())
    yield _worker._Producer(config, {}, wake), woken
    woken.close()
    wake.close()


def test_the_end_of_a_production_run_wakes_nobody_when_nobody_waits(budgeted):
    """An activation made whole in one run (a budget within its window) is news for the writer's next look,
    not a wake-up of its own: in `mux-rate` that was two wake-ups and two AVAILs a batch per worker."""
    made, woken = budgeted
    made.handle("open", Open(0, 0, 0, 1, 20, 1, 0, 64, None, 0))
    made.produce_round()
    assert made.instances[0].produced == 20 and not made.queue
    assert _drain(woken) == b""
    assert made.news()[3] is False, "nobody waits for these samples"


def test_a_want_for_samples_already_made_is_urgent(producer):
    """The planner asks for samples it has not heard of: they were made but not reported, so it waits on the
    report, which must go out at once rather than at the next interval."""
    producer.produce_round()
    producer.news()
    producer.wakes()
    made = producer.instances[0].produced
    assert made > 0
    producer.handle("want", 0, made, 0)
    assert producer.wakes() == 1
    assert producer.news()[3] is True
    assert producer.awaited == {}


@pytest.fixture
def writer():
    """A writer with a real socket pair to stand for the mux process, over the slow stream (producer not started)."""
    ctx = zmq.Context()
    mux = ctx.socket(zmq.PAIR)
    port = mux.bind_to_random_port("tcp://127.0.0.1")
    sock = ctx.socket(zmq.PAIR)
    sock.connect(f"tcp://127.0.0.1:{port}")
    config = _worker.WorkerConfig(0, 1, "unused", [Streamer(slow_samples, 0.001)], None, "raise", os.getpid())
    made = _worker._Writer(config, sock)
    made.producer.handle("open", Open(0, 0, 0, 1, None, 1, 0, 10_000, None, 0))

    def reports(wait_ms: int = 200) -> list[list[list]]:
        got = []
        while mux.poll(wait_ms):
            got += [_worker.FROM_WORKER.decode(frame).reports for frame in mux.recv_multipart()]
            wait_ms = 0
        return got

    made.reports = reports
    yield made
    made.wake_r.close()
    made.producer.wake.close()
    sock.close(0)
    mux.close(0)
    ctx.term()


def test_the_writer_holds_news_nobody_waits_for_until_the_interval_or_urgent_news(writer, monkeypatch):
    monkeypatch.setattr(_worker, "NEWS_SECONDS", 60.0)
    writer.sent = time.perf_counter()
    writer.producer.produce_round()
    writer.report()
    assert writer.reports(100) == [], "samples nobody waits for went out alone before the interval"
    assert list(writer.unsent) == [0]
    produced = writer.producer.instances[0].produced
    writer.producer.handle("want", 0, produced, 0)  # now the planner waits on them
    writer.report()
    assert writer.reports() == [[[0, produced, False]]]
    assert writer.unsent == {}
    writer.producer.produce_round()
    writer.report()
    assert writer.reports(100) == []
    monkeypatch.setattr(_worker, "NEWS_SECONDS", 0.0)
    writer.report()
    assert writer.reports() == [[[0, writer.producer.instances[0].produced, False]]]


def test_samples_of_a_stream_mid_step_go_out_at_once_when_someone_waits_for_them(writer, monkeypatch):
    """A stream that stalls mid-step holds back nothing it made: the writer's periodic look sends its samples
    so far if the planner waits for more of them."""
    monkeypatch.setattr(_worker, "NEWS_SECONDS", 60.0)
    writer.sent = time.perf_counter()
    producer = writer.producer
    producer.produce_round()
    inst = producer.instances[0]
    producer.handle("want", 0, inst.produced + 1000, 0)
    producer.news()
    producer.current = inst  # as while the stream's user code runs
    writer.report()
    assert writer.reports() == [[[0, inst.first + len(inst.ready), False]]]


def test_the_writer_looks_for_news_every_interval_while_the_producer_has_work(writer, monkeypatch):
    """Nothing wakes the writer for news nobody waits for, so it looks by itself: every NEWS_SECONDS while the
    producer has work, and no later than NEWS_SECONDS after its last report for news it holds."""
    monkeypatch.setattr(_worker, "NEWS_SECONDS", 0.5)
    producer = writer.producer
    assert producer.queue and producer.current is None and not producer.updated
    assert writer.wait_ms() == 500
    producer.produce_round()
    writer.sent = time.perf_counter()
    writer.report()
    assert writer.unsent, "held: nobody waits for it"
    producer.queue.clear()  # idle from now on, but holding news
    assert 0 < writer.wait_ms() <= 500
    writer.sent -= 1.0
    assert writer.wait_ms() == 0, "the held news is due"
    writer.report()
    assert writer.reports() and not writer.unsent
    assert writer.wait_ms() == _worker.POLL_MS, "idle, nothing held: it only waits for messages"


def test_a_command_not_yet_done_counts_as_work_for_the_writers_wait(writer, monkeypatch):
    """The producer may be between taking a command and queueing its instance (queue empty, no user code
    running): the writer must not sleep its long poll then, or that command's samples wait for it."""
    monkeypatch.setattr(_worker, "NEWS_SECONDS", 0.5)
    producer = writer.producer
    producer.queue.clear()
    assert not producer.has_work() and writer.wait_ms() == _worker.POLL_MS
    producer.command("want", 0, 0, 20_000)
    assert producer.has_work() and writer.wait_ms() == 500
    command = producer.commands.get_nowait()
    producer.handle(*command)
    producer.handled += 1
    assert producer.queue and producer.has_work(), "the want queued the instance"


def test_the_end_of_a_stream_before_its_budget_is_urgent(budgeted):
    """It changes what the planner does next (the slot's next activation), so the planner waits for it."""
    made, woken = budgeted
    made.handle("open", Open(0, 0, 0, 1, 100, 1, 0, 128, None, 0))
    made.produce_round()
    inst = made.instances[0]
    assert inst.ended and inst.produced == 50
    assert _drain(woken) == b"x"
    assert made.news()[3] is True

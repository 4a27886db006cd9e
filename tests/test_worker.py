"""The worker's producer thread, driven directly: when it wakes the writer (no sockets to the mux)."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

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


def test_a_producer_in_a_long_run_wakes_the_writer_at_most_every_news_interval(producer, monkeypatch):
    """Rounds end every 2 ms while a slow stream has more to make; waking the writer after each one cost the
    producer a GIL hand-over each time (a sixth of a slow stream's time)."""
    monkeypatch.setattr(_worker, "NEWS_SECONDS", 60.0)
    producer.told = time.perf_counter()
    for _ in range(5):
        producer.produce_round()
    assert producer.instances[0].produced >= 5
    assert producer.queue, "the instance still has samples to make"
    assert producer.wakes() == 0
    monkeypatch.setattr(_worker, "NEWS_SECONDS", 0.0)
    producer.produce_round()
    assert producer.wakes() == 1


def test_samples_someone_waits_for_wake_the_writer_as_soon_as_they_are_made(producer, monkeypatch):
    monkeypatch.setattr(_worker, "NEWS_SECONDS", 60.0)
    producer.told = time.perf_counter()
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

"""A faulty environment: a trainer that dies or forks, two threads on one pool, a stalled stream."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prefetch import Pool, PoolClosedError, PoolTimeoutError, Streamer

from .. import streams
from .test_faults import _alive

ROOT = Path(__file__).resolve().parents[2]

BLOCKED_TRAINER = """
import time, prefetch
from tests import streams
pool = prefetch.Pool(prefetch.Streamer(streams.{stream}, 10**6, 20), batch_size=4, workers=2)
time.sleep(1.0)  # both workers reach the blocking sample
print(*[p.pid for _, p in pool._res.processes], flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("stream", ["hog_gil_at", "blocked_with_a_thread_at"])
def test_workers_blocked_in_user_code_die_with_a_sigkilled_trainer(stream):
    trainer = subprocess.Popen([sys.executable, "-c", BLOCKED_TRAINER.format(stream=stream)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        pids = [int(p) for p in trainer.stdout.readline().split()]
        assert pids
        trainer.kill()
        trainer.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        left = [p for p in pids if _alive(p)]
        assert not left, "processes blocked in user code outlived the trainer"
    finally:
        trainer.kill()
        trainer.wait(5)
        trainer.stdout.close()
        for p in pids if "pids" in dir() else []:
            if _alive(p):
                import os
                import signal

                os.kill(p, signal.SIGKILL)


FORKING_TRAINER = """
import os, sys, prefetch
from tests import streams
pool = prefetch.Pool(prefetch.Streamer(streams.endless, 0), batch_size=8, workers=2, timeout=10)
it = iter(pool)
next(it)
pid = os.fork()
if pid == 0:
    try:
        next(iter(pool))
        print("child: got a batch of the parent's pool", flush=True)
    except prefetch.PrefetchError as exc:
        print("child:", type(exc).__name__, str(exc).split(":")[0], flush=True)
    pool.close()
    sys.exit(0)  # a normal exit: multiprocessing's and weakref's exit handlers run
_, status = os.waitpid(pid, 0)
print("child exit status", os.waitstatus_to_exitcode(status), flush=True)
print("parent still gets batches of", next(it).size, flush=True)
pool.close()
"""


def test_a_forked_child_leaves_the_parents_pool_alone():
    run = subprocess.run([sys.executable, "-c", FORKING_TRAINER], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "child: PrefetchError this pool belongs to process" in run.stdout
    assert "child exit status 0" in run.stdout
    assert "parent still gets batches of 8" in run.stdout, run.stdout + run.stderr


def test_two_threads_iterating_one_pool_share_its_batches_exactly_once():
    with Pool(Streamer(streams.numbered, 0, 4000), batch_size=8, workers=2) as pool:
        got: list[list[int]] = [[], []]
        errors = []

        def take(k):
            try:
                for batch in pool:
                    got[k].extend(int(y) for y in batch["y"][: batch.size])
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=take, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    assert sorted(got[0] + got[1]) == list(range(4000))
    assert got[0] and got[1], "both threads took batches"


def test_closing_from_another_thread_wakes_a_waiting_iterator():
    pool = Pool(Streamer(streams.stuck_at, 100, 0), batch_size=8, workers=1)
    outcome = []

    def wait():
        try:
            next(iter(pool))
        except PoolClosedError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    start = time.monotonic()
    pool.close()
    waiter.join(5)
    assert outcome and time.monotonic() - start < 3


def test_a_stream_that_stalls_still_delivers_every_batch_it_made():
    with Pool(Streamer(streams.stuck_at, 1000, 100), batch_size=8, workers=1, timeout=3) as pool:
        got = []
        with pytest.raises(PoolTimeoutError, match=r"waiting on worker\(s\) \[0\]"):
            for batch in pool:
                got.extend(int(y) for y in batch["y"])
        assert got == list(range(96))

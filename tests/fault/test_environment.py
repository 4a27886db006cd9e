"""A faulty environment: a trainer that dies or forks, two threads on one pool, a stalled stream."""

from __future__ import annotations

import os
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


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
print("holding", flush=True)
time.sleep(60)
"""


def test_a_live_segment_of_another_pid_namespace_is_never_swept(tmp_path):
    """A pool in another container sharing /dev/shm: its owner pid means nothing here, but it holds the lock."""
    from prefetch import _shm
    from prefetch.cli import main

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"{_shm.PREFIX}{dead.pid}_0therns"
    path = _shm.SHM_DIR / name
    path.write_bytes(b"\0" * 4096)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert name not in _shm.sweep()
        assert main(["doctor", "--clean"]) == 0
        with Pool(Streamer(streams.numbered, 0, 16), batch_size=8, workers=1) as pool:
            assert len(list(pool)) == 2
        assert path.exists(), "a live segment was removed"
    finally:
        holder.kill()
        holder.wait(5)
        holder.stdout.close()
    assert name in _shm.sweep(), "once its holder is gone the segment is stale"
    assert not path.exists()


def big_sample(n):
    import numpy as np

    for _ in range(n):
        yield {"x": np.zeros(1 << 20, np.float32)}


def test_too_little_shared_memory_is_a_named_error_with_the_fix():
    from prefetch import SharedMemoryError, _shm

    free, _ = _shm.usage()
    batch = int(free * 1.5 / (4 << 20) / 2) + 1
    too_small = r"needs [\d,]+ MB of shared memory, but /dev/shm has [\d,]+ MB free.*--shm-size"
    with Pool(Streamer(big_sample, 10), batch_size=batch, workers=1, prefetch=2) as pool, \
            pytest.raises(SharedMemoryError, match=too_small):
        next(iter(pool))
    # none of this process's segments is left (other processes' pools may have theirs meanwhile)
    assert not [name for name in _shm.segments() if _shm.owner_pid(name) == os.getpid()]

"""Injected failures: each must end in a precise error or an exact recovery, never a hang or a leak."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prefetch import (
    Pool,
    PoolTimeoutError,
    StochasticMux,
    Streamer,
    WorkerDiedError,
    WorkerError,
)

from .. import streams

ROOT = Path(__file__).resolve().parents[2]


def deterministic_mux(length=400, slow=0.0):
    parts = [Streamer(streams.slow_numbered, t, length, slow) if slow else Streamer(streams.random_walk, t, length)
             for t in range(3)]
    return StochasticMux(parts, n_active=2, rate=None, mode="exhaustive", random_state=9)


def rows(batch, fields=("x",)):
    return [tuple(float(batch[f][r].flat[0]) for f in fields) for r in range(batch.size)]


def run_all(pool, fields=("x",), during=None):
    out = []
    for i, batch in enumerate(pool):
        out.extend(rows(batch, fields))
        if during is not None:
            during(i, pool)
    return out


def kill_worker(pool, worker, sig=signal.SIGKILL):
    _, proc = pool._res.processes[1 + worker]
    os.kill(proc.pid, sig)


def test_sigkilled_workers_are_restarted_and_no_sample_is_lost_or_repeated():
    """Kill each worker mid-epoch; the batches equal an uninterrupted run's, global-RNG streams included."""
    fields = ("x", "r")
    with Pool(deterministic_mux(), batch_size=16, workers=2, seed=5) as pool:
        expected = run_all(pool, fields)

    def killer(i, pool):
        if i in (5, 20):
            kill_worker(pool, 0 if i == 5 else 1)
            time.sleep(0.3)

    with Pool(deterministic_mux(), batch_size=16, workers=2, seed=5) as pool:
        got = run_all(pool, fields, killer)
        assert pool.stats()["restarts"] == 2
    assert got == expected
    assert len(got) == 1200


def test_a_worker_killed_while_filling_rewrites_its_rows():
    with Pool(deterministic_mux(length=120, slow=0.002), batch_size=8, workers=2, seed=1) as pool:
        expected = run_all(pool)
    with Pool(deterministic_mux(length=120, slow=0.002), batch_size=8, workers=2, seed=1) as pool:
        got = run_all(pool, during=lambda i, p: kill_worker(p, i % 2) if i in (3, 9, 15) else None)
    assert got == expected


def test_a_worker_that_exits_is_restarted_and_resumes_exactly(tmp_path):
    marker = str(tmp_path / "exited")
    with Pool(Streamer(streams.exit_once_at, 500, 137, marker), batch_size=32, workers=2) as pool:
        got = [int(y) for b in pool for y in b["y"]]
        assert pool.stats()["restarts"] == 1
    assert got == list(range(500))


def test_past_max_restarts_the_exit_status_is_reported():
    start = time.monotonic()
    with Pool(Streamer(streams.exit_always_at, 500, 50), batch_size=8, workers=1, max_restarts=2) as pool, \
            pytest.raises(WorkerDiedError, match="worker 0 exited with status 123") as info:
        list(pool)
    assert info.value.exitcode == 123
    assert "restarted workers 2 times" in " ".join(info.value.__notes__)
    assert time.monotonic() - start < 10


def test_sigkill_with_no_restarts_reports_the_signal():
    with Pool(Streamer(streams.endless, 0), batch_size=8, workers=2, max_restarts=0) as pool:
        it = iter(pool)
        next(it)
        kill_worker(pool, 1)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match="worker 1 was killed by signal 9") as info:
            for _ in it:
                pass
        assert info.value.exitcode == -signal.SIGKILL
        assert time.monotonic() - start < 2


def test_a_stuck_worker_is_reported_after_the_timeout():
    start = time.monotonic()
    with Pool(Streamer(streams.stuck_at, 100, 20), batch_size=8, workers=1, timeout=1.0) as pool, \
            pytest.raises(PoolTimeoutError, match=r"waiting on worker\(s\) \[0\]"):
        list(pool)
    assert time.monotonic() - start < 6


@pytest.mark.parametrize("thread, method, where", [
    ("_Producer", "schedule", r"the producer thread of worker \d"),  # the first OPEN reaches it
    ("_Writer", "fill", r"worker \d"),  # the first FILL reaches it
])
def test_a_bug_in_a_workers_own_threads_is_reported_instead_of_waited_on(monkeypatch, thread, method, where):
    from prefetch import _worker

    def broken(self, *args):
        raise RuntimeError("injected bug")

    monkeypatch.setattr(getattr(_worker, thread), method, broken)
    start = time.monotonic()
    with Pool(Streamer(streams.endless, 0), batch_size=8, workers=2, start_method="fork", timeout=3.0) as pool, \
            pytest.raises(WorkerError, match=where + r": RuntimeError: injected bug"):
        next(iter(pool))
    assert time.monotonic() - start < 5


def test_a_killed_mux_process_raises_instead_of_hanging():
    with Pool(Streamer(streams.endless, 0), batch_size=8, workers=2) as pool:
        it = iter(pool)
        next(it)
        os.kill(pool._res.processes[0][1].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match="mux process was killed by signal 9"):
            for _ in it:
                pass
        assert time.monotonic() - start < 2


TRAINER = """
import sys, time, prefetch
from tests import streams
pool = prefetch.Pool(prefetch.Streamer(streams.endless, 0), batch_size=8, workers=2, start_method=sys.argv[1])
it = iter(pool)
next(it)
print(pool._res.segments[0].name, *[p.pid for _, p in pool._res.processes], flush=True)
time.sleep(120)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_sigkilled_trainer_leaves_no_process_and_no_shared_memory(method):
    """Under forkserver the processes are the forkserver's children: it must exit with the trainer, and they too."""
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, method], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        name, *pids = trainer.stdout.readline().split()
        assert Path("/dev/shm", name).exists()
        trainer.kill()
        trainer.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (any(_alive(int(p)) for p in pids) or Path("/dev/shm", name).exists()):
            time.sleep(0.05)
        assert not [p for p in pids if _alive(int(p))], "children outlived the trainer"
        assert not Path("/dev/shm", name).exists(), "shared memory outlived the trainer"
    finally:
        trainer.kill()
        trainer.wait(5)
        trainer.stdout.close()


def test_an_abandoned_iterator_and_pool_leave_nothing_and_the_next_pool_starts():
    def abandon():
        pool = Pool(Streamer(streams.endless, 0), batch_size=8, workers=2)
        it = iter(pool)
        next(it)

    abandon()
    with Pool(Streamer(streams.numbered, 0, 20), batch_size=10, workers=2) as pool:
        assert [int(y) for b in pool for y in b["y"]] == list(range(20))


def test_ctrl_c_reaches_only_the_trainer():
    """SIGINT to the whole process group: workers and mux ignore it, the trainer cleans up."""
    with Pool(Streamer(streams.endless, 0), batch_size=8, workers=2) as pool:
        it = iter(pool)
        next(it)
        for _, proc in pool._res.processes:
            os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        assert all(proc.is_alive() for _, proc in pool._res.processes)
        assert next(it).size == 8


def test_unpicklable_transform_under_spawn_is_named():
    from prefetch import ArgumentError

    with pytest.raises(ArgumentError, match=r"transform <function .*<lambda>.* cannot be pickled"):
        Pool(Streamer(streams.endless, 0), batch_size=4, workers=1, start_method="spawn",
             transform=lambda s: s)


def test_replayed_restart_of_a_replicated_stream_is_exact():
    source = Streamer(streams.sharded, 600).replicated()
    with Pool(source, batch_size=20, workers=2, seed=3) as pool:
        expected = [int(y) for b in pool for y in b["y"]]
    with Pool(source, batch_size=20, workers=2, seed=3) as pool:
        got = []
        for i, b in enumerate(pool):
            got.extend(int(y) for y in b["y"])
            if i == 4:
                kill_worker(pool, 0)
    assert got == expected
    assert sorted(got) == list(range(600))
    assert np.all(np.diff(got[:20]) > 0)


EXITING = """
import prefetch, sys
from tests import streams
pool = prefetch.Pool(prefetch.Streamer(streams.endless, 0), batch_size=8, workers=2)
next(iter(pool))
print(pool._res.segments[0].name, *[p.pid for _, p in pool._res.processes], flush=True)
"""

INTERRUPTED = """
import prefetch
from tests import streams
with prefetch.Pool(prefetch.Streamer(streams.endless, 0), batch_size=8, workers=2) as pool:
    first = True
    for batch in pool:
        if first:
            print(pool._res.segments[0].name, *[p.pid for _, p in pool._res.processes], flush=True)
            first = False
"""


def _run_and_check(script, interrupt):
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        name, *pids = proc.stdout.readline().split()
        if interrupt:
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            alive = [p for p in pids if _alive(int(p))]
            pytest.fail(f"the trainer did not exit within 30 s; pool processes still alive: {alive}\n{err}")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (any(_alive(int(p)) for p in pids) or Path("/dev/shm", name).exists()):
        time.sleep(0.05)
    assert not [p for p in pids if _alive(int(p))]
    assert not Path("/dev/shm", name).exists()
    return proc.returncode, err


def test_interpreter_exit_closes_a_pool_nobody_closed():
    code, err = _run_and_check(EXITING, interrupt=False)
    assert code == 0, err
    assert "leaked" not in err


def test_ctrl_c_in_the_training_loop_cleans_up():
    code, err = _run_and_check(INTERRUPTED, interrupt=True)
    assert "KeyboardInterrupt" in err
    assert code != 0


def test_a_restarted_worker_jumps_with_seek_instead_of_replaying(tmp_path):
    with Pool(streams.SeekOnly(600, str(tmp_path / "started")), batch_size=10, workers=1) as pool:
        got = []
        for i, batch in enumerate(pool):
            got.extend(int(y) for y in batch["y"])
            if i == 3:
                kill_worker(pool, 0)
        assert pool.stats()["restarts"] == 1
    assert got == list(range(600))


@pytest.mark.parametrize("at", [0, 1, 5])
def test_a_worker_that_dies_before_the_schema_is_known_is_asked_again(tmp_path, at):
    """The first batch's schema question died with the worker: its restart must be asked again, not hang."""
    marker = str(tmp_path / "exited")
    with Pool(Streamer(streams.exit_once_at, 100, at, marker), batch_size=8, workers=1, timeout=20) as pool:
        got = [int(y) for b in pool for y in b["y"]]
        assert pool.stats()["restarts"] == 1
    assert got == list(range(100))

"""Module-level streams for pool tests (the spawn start method pickles them by name)."""

from __future__ import annotations

import itertools
import os
import time

import numpy as np

import prefetch


def numbered(tag, n, width=4):
    """n samples: x holds (tag, i) repeated, y is i."""
    for i in range(n):
        yield {"x": np.full(width, tag * 1_000_000 + i, np.int64), "y": np.int64(i), "tag": np.int64(tag)}


def endless(tag, width=4):
    for i in itertools.count():
        yield {"x": np.full(width, tag * 1_000_000 + i, np.int64), "y": np.int64(i), "tag": np.int64(tag)}


def slow_start(tag, seconds, width=4):
    """endless, after `seconds` of CPU work at its start (a stream that loads something)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    yield from endless(tag, width)


def global_random(tag):
    """Uses numpy's and Python's global RNGs, which the pool reseeds per stream instance."""
    import random

    while True:
        yield {"a": np.random.random(), "b": np.float64(random.random()), "tag": np.int64(tag)}


def gaussian_walk(tag, every=1):
    """A legacy Gaussian every `every` samples (every other one is the cached one) and a `random.random()` per
    sample, from the global RNGs, with the seed its instance was given: what an isolated run with that seed
    must reproduce. With `every=0`, the same fields and no RNG at all."""
    import random

    seed = prefetch.worker_info().seed
    for i in itertools.count():
        g = np.random.randn() if every and i % every == 0 else 0.0
        r = random.random() if every else 0.0
        yield {"g": np.float64(g), "r": np.float64(r), "tag": np.int64(tag), "seed": np.int64(seed)}


def sharded(n):
    """A finite source that reads its own shard through worker_info()."""
    info = prefetch.worker_info()
    for i in range(info.replica, n, info.num_replicas):
        yield {"y": np.int64(i), "replica": np.int64(info.replica), "seed": np.int64(info.seed % 2**62)}


def with_objects(n):
    for i in range(n):
        yield {"x": np.float32(i), "name": f"item-{i}", "raw": bytes([i % 256])}


def pairs(n):
    for i in range(n):
        yield (np.full((2, 3), i, np.float32), np.int64(i))


def bad_shape_at(n, bad):
    for i in range(n):
        yield {"x": np.zeros(3 if i != bad else 4, np.float32)}


def raises_at(n, bad):
    for i in range(n):
        if i == bad:
            raise ValueError(f"corrupt record {i}")
        yield {"y": np.int64(i)}


def slow(n, seconds):
    for i in range(n):
        time.sleep(seconds)
        yield {"y": np.int64(i)}


def fail_odd(sample):
    if sample["y"] % 2:
        raise RuntimeError("odd sample")
    return sample


def add_pid(sample):
    return {**sample, "pid": np.int64(os.getpid())}


def not_a_sample(n):
    for i in range(n):
        yield [i]


def exit_once_at(n, at, marker, code=123):
    """Exits the whole worker process at sample `at`, the first time only (a marker file remembers)."""
    for i in range(n):
        if i == at and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(code)
        yield {"x": np.full(4, i, np.int64), "y": np.int64(i)}


def exit_always_at(n, at, code=123):
    for i in range(n):
        if i == at:
            os._exit(code)
        yield {"y": np.int64(i)}


def stuck_at(n, at):
    for i in range(n):
        while i == at:
            pass
        yield {"y": np.int64(i)}


def slow_numbered(tag, n, seconds):
    for i in range(n):
        time.sleep(seconds)
        yield {"x": np.full(4, tag * 1_000_000 + i, np.int64), "y": np.int64(i), "tag": np.int64(tag)}


def random_walk(tag, n):
    """Deterministic per seed, and uses the global numpy RNG: a restart must replay it exactly."""
    for i in range(n):
        yield {"x": np.full(4, tag * 1_000_000 + i, np.int64), "r": np.float64(np.random.random()),
               "tag": np.int64(tag)}


def with_bad_sample(n, at, bad):
    """n good {"x": float32[3], "y": int64} samples, except sample `at`, which is `bad`."""
    for i in range(n):
        yield bad if i == at else {"x": np.full(3, i, np.float32), "y": np.int64(i)}


def seek_only_rows(n, marker, start):
    """Samples from `start`; raises if one activation (epoch) is started from 0 twice (a marker file remembers)."""
    info = prefetch.worker_info()
    marker = f"{marker}.{info.activation if info else 0}"
    if start == 0:
        if os.path.exists(marker):
            raise RuntimeError("replayed from the start instead of seeking")
        open(marker, "w").close()
    for i in range(start, n):
        time.sleep(0.0005)
        yield {"y": np.int64(i)}


class SeekOnly(prefetch.Streamer):
    """A stream each epoch of which can start from the beginning only once; after that, seek must reach it."""

    def __init__(self, n, marker):
        super().__init__(seek_only_rows, n, marker, 0)
        self.n, self.marker = n, marker

    def seek(self, position):
        return seek_only_rows(self.n, self.marker, position)


def stalls_on_second_activation(seconds):
    """Counts up from 0 in every activation; the second activation's start takes `seconds` (a stall)."""
    info = prefetch.worker_info()
    if info is not None and info.activation == 1:
        time.sleep(seconds)
    i = 0
    while True:
        yield {"y": np.int64(i)}
        i += 1


def hog_gil_at(n, at):
    """Yields until `at`, then runs C code that holds the GIL for hours (no Python thread can run)."""
    for i in range(n):
        if i == at:
            sum(range(10**14))
        yield {"y": np.int64(i)}


def blocked_with_a_thread_at(n, at):
    """Yields until `at`, then waits for ever on a non-daemon thread that waits for ever (a stuck fetch)."""
    import threading

    for i in range(n):
        if i == at:
            stuck = threading.Thread(target=threading.Event().wait)
            stuck.start()
            stuck.join()
        yield {"y": np.int64(i)}

"""Checkpoint and resume: what a state dict weighs, and how long a resume takes against a fresh start.

    python3 bench/resume.py [--samples 1000000]

Sources of `small` samples (float32[128] + int64), each checkpointed deep into its run:
a StochasticMux of three plain finite streams read to their end (rate=None: a resume
replays each live activation up to its position), a stream that implements `seek`
(resume jumps), a StochasticMux of three endless streams with rate=64 after 3,000
batches (resume restores the policy and replays only the live activations), and a
ChainMux of three seekable 10^6-sample streams after 5,000 batches (resume jumps).
Writes bench/results/resume.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np
from _report import RESULTS, save

import prefetch


def rows(stream: int, n: int | None, start: int = 0):
    base = np.arange(128, dtype=np.float32)
    for i in range(start, n) if n is not None else itertools.count(start):
        yield {"X": base + np.float32(i % 997), "Y": np.int64(stream * 10**7 + i)}


class Seekable(prefetch.Streamer):
    """A stream that can start at any sample: resume jumps instead of replaying."""

    def __init__(self, n: int, stream: int = 0) -> None:
        super().__init__(rows, stream, n)
        self.n, self.stream = n, stream

    def seek(self, position: int):
        return rows(self.stream, self.n, position)


def sources(samples: int, batch_size: int):
    third = samples // 3
    half = samples // batch_size // 2
    return {
        "mux of 3 plain finite streams, rate=None (replay of live activations)": (lambda: prefetch.StochasticMux(
            [prefetch.Streamer(rows, s, third) for s in range(3)], n_active=3, rate=None, mode="exhaustive"), half),
        "one seekable stream (jump)": (lambda: Seekable(samples), half),
        "mux of 3 endless streams, n_active=2, rate=64, after 3,000 batches": (lambda: prefetch.StochasticMux(
            [prefetch.Streamer(rows, s, None) for s in range(3)], n_active=2, rate=64), 3000),
        "ChainMux of 3 seekable 10^6-sample streams, after 5,000 batches": (lambda: prefetch.ChainMux(
            [Seekable(10**6, s) for s in range(3)]), 5000),
    }


def measure(make, half: int, batch_size: int) -> dict:
    with prefetch.Pool(make(), batch_size=batch_size, workers=2, seed=1) as pool:
        it = iter(pool)
        for batch in itertools.islice(it, half):
            del batch
        state = pool.state_dict()
        expected = next(it)["Y"].copy()
    text = json.dumps(state)
    start = time.monotonic()
    with prefetch.Pool(make(), batch_size=batch_size, workers=2, state=state) as pool:
        first = next(iter(pool))
        resume_s = time.monotonic() - start
        assert np.array_equal(first["Y"], expected), "the resumed batch differs"
        del first
    start = time.monotonic()
    with prefetch.Pool(make(), batch_size=batch_size, workers=2, seed=1) as pool:
        first = next(iter(pool))
        fresh_s = time.monotonic() - start
        del first
    return {"batches_skipped": half, "samples_skipped": half * batch_size, "state_bytes_json": len(text),
            "resume_to_first_batch_s": round(resume_s, 3), "fresh_start_to_first_batch_s": round(fresh_s, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", default=str(RESULTS / "resume.json"))
    args = parser.parse_args()
    report = {name: measure(make, depth, args.batch_size)
              for name, (make, depth) in sources(args.samples, args.batch_size).items()}
    save(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

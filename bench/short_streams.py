"""A StochasticMux of streams shorter than its rate: in-process iteration against the pool.

    python3 bench/short_streams.py [--streams 30] [--length 20] [--rate 64] [--seconds 3] [--rounds 2]

Each stream yields `length` small samples (float32[128] + int64) and ends; the mux
(n_active=16, with_replacement) starts it afresh at every activation, so every
activation ends before its budget. That is the case the pool's look-ahead cannot
foresee from budgets alone: it learns each stream's length from its first end and
draws its blocks ahead up to that end. Rounds alternate in-process and pool runs;
writes bench/results/short_streams.json with each round's figures and the pool's
activations opened ahead in vain and used as foreseen.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from _report import RESULTS, save

from prefetch import Pool, StochasticMux, Streamer


def short(stream: int, length: int):
    x = np.full(128, stream, np.float32)
    for _ in range(length):
        yield {"X": x, "Y": np.int64(stream)}


def mux(streams: int, length: int, rate: float) -> StochasticMux:
    return StochasticMux([Streamer(short, k, length) for k in range(streams)], n_active=16, rate=rate,
                         random_state=0)


def in_process(args: argparse.Namespace) -> float:
    it = mux(args.streams, args.length, args.rate).iterate()
    batch = {"X": np.empty((256, 128), np.float32), "Y": np.empty(256, np.int64)}
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        for row in range(256):
            sample = next(it)
            batch["X"][row], batch["Y"][row] = sample["X"], sample["Y"]
        count += 256
    return count / (time.perf_counter() - start)


def pooled(args: argparse.Namespace) -> tuple[float, dict]:
    with Pool(mux(args.streams, args.length, args.rate), batch_size=256, workers=args.workers, seed=0) as pool:
        it = iter(pool)
        next(it)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            count += next(it).size
        rate = count / (time.perf_counter() - start)
        stats = pool.stats()
    return rate, {k: stats[k] for k in ("activations_foreseen", "activations_foreseen_in_vain")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=30)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--rate", type=float, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=str(RESULTS / "short_streams.json"))
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):
        here = in_process(args)
        pool, counts = pooled(args)
        rounds.append({"in_process": round(here), "pool": round(pool), "pool_over_in_process": round(pool / here, 3),
                       **counts})
    report = {"streams": args.streams, "length": args.length, "rate": args.rate, "workers": args.workers,
              "rounds": rounds,
              "median_pool_over_in_process": statistics.median(r["pool_over_in_process"] for r in rounds)}
    save(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

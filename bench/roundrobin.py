"""Does a mux of non-replicated streams scale with workers? RoundRobinMux over one small stream per worker.

    python3 bench/roundrobin.py [--workers 1,2,4,8] [--seconds 2] [--prefetch N]

Prints samples/s per worker count and writes bench/results/roundrobin.json. The pool
runs with its default slots (sized by a batch's bytes) unless --prefetch sets them;
the README's 16-core figures were taken with 16.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from prefetch import Pool, RoundRobinMux, Streamer
from prefetch._bench.workloads import small_samples


def measure(workers: int, seconds: float, prefetch: int | None) -> float:
    mux = RoundRobinMux([Streamer(small_samples, k) for k in range(workers)], mode="cycle")
    with Pool(mux, batch_size=256, workers=workers, prefetch=prefetch, seed=0) as pool:
        it = iter(pool)
        next(it)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            count += next(it).size
        return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--prefetch", type=int, default=None, help="slots (default: the pool's own)")
    args = parser.parse_args()
    rows = []
    for n in [int(w) for w in args.workers.split(",")]:
        rate = measure(n, args.seconds, args.prefetch)
        rows.append({"workers": n, "samples_per_s": rate})
        print(f"RoundRobinMux over {n:>2} streams, {n:>2} workers: {rate:>12,.0f} samples/s")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "roundrobin.json").write_text(json.dumps({"cores": os.cpu_count(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()

"""The mux process's planning cost per batch, with the planner alone: the ceiling it puts on a pool.

    python3 bench/planner.py [--sources mux,mux-rate,rr8] [--batches 2000] [--repeats 3]

The planner runs as in a pool's mux process (the same source tree, seeded from a
pool seed, and the same instance table), but the table's messages go nowhere and
every instance reports its samples ready at once, so nothing waits: what is left
is the CPU time of planning, taking the per-batch snapshot, and encoding each
batch's FILL parts. Process time, the best of --repeats runs, so other load on the
machine moves it far less than a throughput figure. A pool cannot deliver more
batches per second than 1e6 / (us per batch) on one core of this speed, whatever
its worker count; the messages to and from the workers come on top.

Sources: the `prefetch bench` workloads (small, mux, mux-rate, activation), and
rrN (RoundRobinMux over N small streams, N workers), shN (ShuffledMux over N),
mux300 (StochasticMux of 300 streams, n_active=16, rate=64, 8 workers), short
(bench/short_streams.py's mux: 30 streams of 20 samples, n_active=16, rate=64:
every activation ends early, and the look-ahead foresees it).
Writes bench/results/planner.json and prints it.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from _report import RESULTS, save
from short_streams import short

from prefetch import RoundRobinMux, ShuffledMux, StochasticMux, Streamer
from prefetch._bench.workloads import WORKLOADS, small_samples
from prefetch._messages import TO_WORKER, Fill
from prefetch._muxproc.instances import InstanceTable
from prefetch._muxproc.planner import Planner
from prefetch._pool import _prepare

SLOTS = 16


SHORT = 20
"""Samples of each stream of the short source."""


def source(name: str) -> tuple[Streamer, int, int]:
    """(source, batch size, workers) of a named source."""
    if name in WORKLOADS:
        return WORKLOADS[name].source(), WORKLOADS[name].batch_size, 2
    if name == "short":
        return StochasticMux([Streamer(short, k, SHORT) for k in range(30)], n_active=16, rate=64), 256, 2
    if name.startswith("rr"):
        n = int(name[2:])
        return RoundRobinMux([Streamer(small_samples, k) for k in range(n)], mode="cycle"), 256, n
    if name.startswith("sh"):
        n = int(name[2:])
        return ShuffledMux([Streamer(small_samples, k) for k in range(n)]), 256, 8
    if name == "mux300":
        return StochasticMux([Streamer(small_samples, k) for k in range(300)], n_active=16, rate=64), 256, 8
    raise SystemExit(f"unknown source {name!r}")


def measure(name: str, batches: int, repeats: int) -> dict[str, Any]:
    src, batch_size, workers = source(name)
    tree = _prepare(src, seed=0)
    table = InstanceTable(lambda worker, message: TO_WORKER.encode(message), workers, 0, 0, SLOTS * batch_size)
    planner = Planner(tree.source, tree.leaves, table, batch_size, "partial", SLOTS * batch_size, [])

    length = SHORT if name == "short" else None

    def report_all_ready() -> None:
        reports = [[iid, inst.assigned + 10**6 if inst.budget is None else inst.budget, inst.budget is not None]
                   for iid, inst in table.instances.items()]
        if length is not None:  # every stream ends after `length` samples, before its budget or at it
            reports = [[iid, min(ready, length), ended or ready >= length] for iid, ready, ended in reports]
        table.on_avail(reports)
        table.take_closed()

    def plan(n: int) -> None:
        done = 0
        while done < n:
            batch = planner.next_batch() if planner.running() else None
            if batch is None:
                report_all_ready()
                continue
            planner.snapshot()
            for wire in batch.by_worker()[0].values():
                TO_WORKER.encode(Fill([[0, wire]]))
            done += 1
            if done % 4 == 0:
                report_all_ready()

    plan(max(50, batches // 10))  # past the start-up
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        plan(batches)
        best = min(best, (time.process_time() - start) / batches)
    return {"source": name, "workers": workers, "batch_size": batch_size, "us_per_batch": round(1e6 * best, 1),
            "ceiling_samples_per_s": round(batch_size / best)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="small,mux,mux-rate,activation,short,rr4,rr8,rr14,sh8,mux300")
    parser.add_argument("--batches", type=int, default=2000, help="batches per run (a tenth for mux-rate, mux300)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name in args.sources.split(","):
        slow = name in ("mux-rate", "mux300", "activation", "short")
        row = measure(name, max(1, args.batches // 10) if slow else args.batches, args.repeats)
        rows.append(row)
        print(f"{name:10} {row['us_per_batch']:>9,.1f} us/batch  ceiling {row['ceiling_samples_per_s']:>12,} samples/s")
    save({"cores": os.cpu_count(), "results": rows}, str(RESULTS / "planner.json"))


if __name__ == "__main__":
    main()

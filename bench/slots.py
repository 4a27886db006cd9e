"""Samples/s against the pool's slot count (`prefetch=`), beside its default (slots sized by a batch's bytes).

    python3 bench/slots.py [--workloads small,mux,image] [--slots 8,16,32,64,128,auto] [--rounds 2] [--seconds 3]

Each round measures every workload at every slot count in turn, so a machine that
drifts moves all of them alike; the table gives each figure's median and range over
the rounds, and the slot count `auto` chose. Small batches are bound by the slots'
round trip (trainer, mux process, worker, mux process, trainer), so they gain from
more slots until the CPU is the limit; workloads bound by CPU (`mux-rate`, `cpu`) do
not. Writes bench/results/slots.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from _report import RESULTS, save

from prefetch import Pool
from prefetch._bench.workloads import WORKLOADS


def measure(name: str, slots: int | None, workers: int, seconds: float) -> tuple[float, int]:
    """(samples/s after the first 50 batches, slots the pool had) for one workload at one slot count."""
    w = WORKLOADS[name]
    with Pool(w.source(), batch_size=w.batch_size, workers=workers, prefetch=slots, transform=w.transform,
              seed=0) as pool:
        it = iter(pool)
        for _ in range(50):
            next(it)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            count += next(it).size
        return count / (time.perf_counter() - start), pool.options.prefetch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="small,mux,image")
    parser.add_argument("--slots", default="8,16,32,64,128,auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    counts = [None if s == "auto" else int(s) for s in args.slots.split(",")]
    runs: dict[tuple[str, int | None], list[float]] = {}
    chosen: dict[str, int] = {}
    for _ in range(args.rounds):
        for name in args.workloads.split(","):
            for slots in counts:
                rate, used = measure(name, slots, args.workers, args.seconds)
                runs.setdefault((name, slots), []).append(rate)
                if slots is None:
                    chosen[name] = used
    rows: list[dict[str, Any]] = []
    for (name, slots), rates in runs.items():
        label = f"auto ({chosen[name]})" if slots is None else str(slots)
        rows.append({"workload": name, "slots": label, "samples_per_s": round(statistics.median(rates)),
                     "range": [round(min(rates)), round(max(rates))]})
        print(f"{name:10} slots {label:>10}  {statistics.median(rates):>12,.0f} samples/s  "
              f"({min(rates):,.0f}-{max(rates):,.0f})")
    save({"cores": os.cpu_count(), "workers": args.workers, "rounds": args.rounds, "seconds": args.seconds,
          "results": rows}, str(RESULTS / "slots.json"))


if __name__ == "__main__":
    main()

"""Soak: stream many samples through a 3-stream mux while SIGKILLing a worker every few seconds.

    python3 bench/soak.py [--samples 10000000] [--kill-every 500000] [--json bench/results/soak.json]

Every sample carries its stream and its position in that stream; the trainer checks
per batch that each stream's positions continue without a gap or a repeat, so any
lost or duplicated sample is counted. A worker is killed after every `--kill-every`
delivered samples (a fixed count, not a clock: a restarted worker replays its streams
from their start, which takes longer the further they are, and a clock would kill the
next worker before the last one caught up). It reports restarts, the time between
kills, the trainer's and each worker's resident memory over time (a worker's figures
follow its restarts), and /dev/shm use. Not part of the test suite: it runs for minutes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
from _report import RESULTS, save

import prefetch


def positions(stream: int):
    """An endless deterministic stream: (stream id, position, a payload derived from both)."""
    base = np.arange(32, dtype=np.float32)
    for i in itertools.count():
        yield {"s": np.int64(stream), "i": np.int64(i), "x": base + np.float32(i % 1000)}


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def shm_mb() -> float:
    return sum(p.stat().st_size for p in Path("/dev/shm").glob("prefetch_*")) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--kill-every", type=int, default=500_000, help="samples delivered between SIGKILLs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=str(RESULTS / "soak.json"))
    args = parser.parse_args()

    mux = prefetch.StochasticMux([prefetch.Streamer(positions, s) for s in range(3)], n_active=3, rate=None,
                                 weights=[0.5, 0.3, 0.2], random_state=1)
    next_position = np.zeros(3, dtype=np.int64)
    lost = duplicated = disordered = batches = delivered = kills = 0
    timeline = []
    start = time.monotonic()
    next_kill = args.kill_every
    kill_times = []
    next_sample = start
    with prefetch.Pool(mux, batch_size=256, workers=args.workers, max_restarts=10**9, seed=0) as pool:
        for batch in pool:
            s, i = batch["s"], batch["i"]
            for stream in range(3):
                got = i[s == stream]
                if len(got):
                    want = np.arange(next_position[stream], next_position[stream] + len(got))
                    if not np.array_equal(got, want):
                        disordered += 1
                        lost += int(max(0, got.max() + 1 - next_position[stream] - len(np.unique(got))))
                        duplicated += int(len(got) - len(np.unique(got)))
                    next_position[stream] = max(next_position[stream], int(got.max()) + 1)
            batches += 1
            delivered += batch.size
            del batch, s, i
            now = time.monotonic()
            if delivered >= next_kill:
                victim = kills % args.workers
                os.kill(pool._res.processes[1 + victim][1].pid, signal.SIGKILL)
                kills += 1
                kill_times.append(now - start)
                next_kill = delivered + args.kill_every
            if now >= next_sample:
                workers = [rss_mb(p.pid) for _, p in pool._res.processes[1:]]
                timeline.append({"t": round(now - start, 1), "samples": delivered, "trainer_mb": rss_mb(os.getpid()),
                                 "mux_mb": rss_mb(pool._res.processes[0][1].pid), "workers_mb": workers,
                                 "shm_mb": shm_mb()})
                next_sample = now + 1.0
            if delivered >= args.samples:
                break
        stats = pool.stats()
    elapsed = time.monotonic() - start
    trainer = [t["trainer_mb"] for t in timeline]
    report = {
        "samples": delivered, "batches": batches, "seconds": round(elapsed, 1),
        "samples_per_s": round(delivered / elapsed), "kills": kills, "restarts": stats["restarts"],
        "seconds_between_kills": [round(b - a, 2) for a, b in itertools.pairwise([0.0, *kill_times])],
        "lost": lost, "duplicated": duplicated, "batches_out_of_order": disordered,
        "per_stream": next_position.tolist(),
        "trainer_rss_mb": {"first": trainer[0], "peak": max(trainer), "last": trainer[-1]},
        "worker_rss_mb": {f"worker {w}": {"first": timeline[0]["workers_mb"][w],
                                          "peak": max(t["workers_mb"][w] for t in timeline),
                                          "last": timeline[-1]["workers_mb"][w]} for w in range(args.workers)},
        "shm_mb": {"peak": max(t["shm_mb"] for t in timeline), "after_close": shm_mb()},
        "timeline": timeline,
    }
    save(report, args.json, {k: v for k, v in report.items() if k != "timeline"})
    return 0 if lost == duplicated == disordered == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

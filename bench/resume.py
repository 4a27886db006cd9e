"""Checkpoint and resume: what a state dict weighs, and how long a resume takes against a fresh start.

    python3 bench/resume.py [--samples 1000000]

Sources of `small` samples (float32[128] + int64), each checkpointed deep into its run:
a StochasticMux of three plain finite streams read to their end (rate=None: a resume
replays each live activation up to its position), a stream that implements `seek`
(resume jumps), a StochasticMux of three endless streams with rate=64 after 3,000
batches (resume restores the policy and replays only the live activations), and a
ChainMux of three seekable 10^6-sample streams after 5,000 batches (resume jumps); and
a volume loader (`bind_data_generator(...).flow()`, 20,000 MNIST-like files served from
127.0.0.1 with 5 ms added to every request) checkpointed 70% into its first epoch:
resume jumps to the position without fetching the files before it. The volume's three
runs (the checkpointed one, the resumed one, the fresh one) each start with an empty
cache, so resume and fresh fetch the same number of files.
Writes bench/results/resume.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import RESULTS, save

import prefetch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.volume_helpers import Server, mnist_like

VOLUME_FILES = 20_000
VOLUME_BATCH = 64
VOLUME_DEPTH = 0.7
"""How far into the volume loader's first epoch its checkpoint is taken."""
VOLUME_DELAY_S = 0.005

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


def load_digit(file_names, metadatas):
    return {"X": np.load(file_names[0]), "Y": np.int64(metadatas[0]["label"])}


def measure_volume(files: int) -> dict:
    """A volume loader's resume against a fresh start, each from an empty cache behind a slow server."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vol, version = mnist_like(root, files)
        vol.close()
        with Server(root / "mnist", delay=VOLUME_DELAY_S) as server:
            def loader(cache: str):
                gen = prefetch.bind_data_generator(server.url, f"@version:{version}", load_digit,
                                                   batch_size=VOLUME_BATCH, workers=2, cache_dir=root / cache)
                return gen, gen.flow().train

            depth = int(files * VOLUME_DEPTH) // VOLUME_BATCH
            gen, train = loader("first")
            it = iter(train)
            for batch in itertools.islice(it, depth):
                del batch
            state = train.state_dict()
            expected = next(it)["X"].copy()
            gen.close()
            start = time.monotonic()
            gen, train = loader("resumed")
            train.load_state_dict(state)
            first = next(iter(train))
            resume_s = time.monotonic() - start
            assert np.array_equal(first["X"], expected), "the resumed batch differs"
            del first
            gen.close()
            start = time.monotonic()
            gen, train = loader("fresh")
            first = next(iter(train))
            fresh_s = time.monotonic() - start
            del first
            gen.close()
    return {"batches_skipped": depth, "samples_skipped": depth * VOLUME_BATCH,
            "state_bytes_json": len(json.dumps(state)), "resume_to_first_batch_s": round(resume_s, 3),
            "fresh_start_to_first_batch_s": round(fresh_s, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--volume-files", type=int, default=VOLUME_FILES)
    parser.add_argument("--json", default=str(RESULTS / "resume.json"))
    args = parser.parse_args()
    report = {name: measure(make, depth, args.batch_size)
              for name, (make, depth) in sources(args.samples, args.batch_size).items()}
    report[f"volume loader, {args.volume_files:,} files behind a 5 ms server, {VOLUME_DEPTH:.0%} into the epoch"] = (
        measure_volume(args.volume_files))
    save(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

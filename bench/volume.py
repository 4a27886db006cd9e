"""Data volumes: time to first batch and throughput, uncached vs cached, behind a slow HTTP server; query speed.

    python3 bench/volume.py [--files 10000] [--delay 0.005] [--points 1000000]

Serves a volume of MNIST-like .npy files from 127.0.0.1 with `delay` seconds added to
every request, streams it with bind_data_generator (2 workers, batch 64) once with an
empty cache and once from the cache with the server stopped, then times queries over
an index of `points` data points. Writes bench/results/volume.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import RESULTS, save

import prefetch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.volume_helpers import Server, mnist_like


def load_digit(file_names, metadatas):
    return np.load(file_names[0]), np.int64(metadatas[0]["label"])


def stream(url: str, cache: Path, version: str) -> dict[str, float]:
    start = time.monotonic()
    gen = prefetch.bind_data_generator(url, f"@version:{version}", load_digit, batch_size=64, workers=2,
                                       cache_dir=cache)
    loader = gen.flow()
    it = iter(loader)
    first = next(it)
    first_s = time.monotonic() - start
    count = first.size
    del first
    t0 = time.monotonic()
    for batch in it:
        count += batch.size
    rate = (count - 64) / (time.monotonic() - t0)
    gen.close()
    return {"first_batch_s": round(first_s, 3), "samples_per_s": round(rate), "samples": count}


def query_speed(root: Path, points: int) -> dict[str, float]:
    vol = prefetch.Volume.init(root / "big")
    blob = root / "blob.bin"
    blob.write_bytes(b"x")
    t0 = time.monotonic()
    with vol.transaction():
        for i in range(points):
            vol.add({"f.bin": blob}, {"label": ["cat", "dog", "bird", "fish"][i % 4], "n": i,
                                      "meta": {"site": i % 100}}, id=f"{i:08d}")
    vol.commit("big")
    build = time.monotonic() - t0
    out = {"points": points, "build_s": round(build, 1)}
    for name, query in [("filter", "label:cat AND n:[1000 TO 500000] AND meta.site:>50"),
                        ("split+sample", "@split:0.6:0.2:0.2 @sample:0.01"),
                        ("all", "")]:
        t0 = time.monotonic()
        result = vol.query(query)
        out[f"{name}_s"] = round(time.monotonic() - t0, 2)
        out[f"{name}_selected"] = len(result)
    vol.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--json", default=str(RESULTS / "volume.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vol, version = mnist_like(root, args.files)
        vol.close()
        cache = root / "cache"
        with Server(root / "mnist", delay=args.delay) as server:
            uncached = stream(server.url, cache, version)
        cached = stream(server.url, cache, version)
        report = {"files": args.files, "request_delay_s": args.delay, "uncached": uncached,
                  "cached_server_stopped": cached, "query": query_speed(root, args.points)}
    save(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

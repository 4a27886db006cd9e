"""Throughput of prefetch.Pool beside its peers on the four workloads; writes bench/results/throughput.json.

    python3 bench/throughput.py [--quick]   # same as: prefetch bench --json bench/results/throughput.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefetch.cli import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    sys.exit(main(["bench", "--json", str(out / "throughput.json"), *sys.argv[1:]]))

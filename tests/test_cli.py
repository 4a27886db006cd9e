"""The command line: doctor finds and removes segments of dead pools; bench runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from prefetch import _shm
from prefetch.cli import main


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_doctor_lists_then_cleans_segments_of_dead_owners(capsys):
    name = f"{_shm.PREFIX}{dead_pid()}_deadbeef"
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)
    live = _shm.new_name()
    fd = os.open(f"/dev/shm/{live}", os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    try:
        assert main(["doctor"]) == 0
        out = capsys.readouterr().out
        assert name in out and "--clean removes them" in out
        assert live not in out, "a segment of a live process is not stale"
        assert os.path.exists(f"/dev/shm/{name}")
        assert main(["doctor", "--clean"]) == 0
        assert not os.path.exists(f"/dev/shm/{name}")
        assert main(["doctor"]) == 0
        assert "no shared memory left" in capsys.readouterr().out
    finally:
        for leftover in (name, live):
            _shm.unlink(leftover)


def test_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--workloads", "small", "--seconds", "0.2", "--quick", "--json", str(out),
                 "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    runners = {r["runner"] for r in data["results"]}
    assert {"prefetch", "in-process", "numpy.copyto"} <= runners
    assert all(r["samples_per_s"] > 0 for r in data["results"])

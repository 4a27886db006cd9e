"""The command line: doctor finds and removes segments of dead pools; bench runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import pytest

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


def test_bench_rounds_report_the_median_of_each_figure_and_ratios_taken_within_each_round(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--workloads", "small", "--seconds", "0.2", "--quick", "--rounds", "3", "--json", str(out),
                 "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["rounds"] == 3
    for result in data["results"]:
        rates = result["extra"]["rounds"]
        assert len(rates) == 3 and result["samples_per_s"] == sorted(rates)[1]
    for target in data["targets"]:
        values = [v for v in target["rounds"] if v is not None]
        assert len(target["rounds"]) == 3 and (not values or target["value"] == sorted(values)[(len(values) - 1) // 2])
    rates = {r["runner"]: r["extra"]["rounds"] for r in data["results"]}
    for target in [t for t in data["targets"] if t["target"].startswith("small: prefetch / ")]:
        peer = target["target"].removeprefix("small: prefetch / ").removesuffix(" (x2)")
        if peer not in rates:  # the peer is not installed here
            assert target["rounds"] == [None, None, None] and target["value"] is None
            continue
        assert target["rounds"] == pytest.approx([a / b for a, b in zip(rates["prefetch"], rates[peer], strict=True)])
    printed = capsys.readouterr().out
    assert "median of 3 rounds" in printed and "range" in printed


def test_bench_rejects_zero_rounds(capsys):
    with contextlib.suppress(SystemExit):
        main(["bench", "--workloads", "small", "--rounds", "0"])
    assert "--rounds needs a count >= 1" in capsys.readouterr().err


def test_volume_commands_init_add_commit_log_query_clone(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    (data / "dogs").mkdir()
    for i in range(3):
        (data / "cats" / f"c{i}.txt").write_text(f"cat {i}")
        (data / "dogs" / f"d{i}.txt").write_text(f"dog {i}")
    (data / "cats" / "folder.metadata.json").write_text(json.dumps({"c0.txt": {"label": "cat", "size": 0},
                                                                     "c1.txt": {"label": "cat", "size": 1}}))
    (data / "cats" / "c2.txt.metadata.json").write_text(json.dumps({"label": "cat", "size": 2}))
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text("\n".join(json.dumps({"name": f"dogs/d{i}.txt", "label": "dog", "size": i}) for i in range(3)))
    vol = str(tmp_path / "vol")
    assert main(["volume", "init", vol]) == 0
    assert main(["volume", "add", vol, str(data), "--jsonl", str(jsonl)]) == 0
    assert "staged 6 data points" in capsys.readouterr().out
    assert main(["volume", "commit", vol, "-m", "pets"]) == 0
    version = capsys.readouterr().out.strip()
    assert len(version) == 40
    assert main(["volume", "log", vol]) == 0
    assert f"{version}          6 data points  pets" in capsys.readouterr().out
    assert main(["volume", "query", vol, "label:cat AND size:>0"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["id"] for line in lines] == ["cats/c1.txt", "cats/c2.txt"]
    dest = tmp_path / "out"
    pattern = "$@phase/$label/$@name"
    assert main(["volume", "clone", vol, "size:<2 @split:0.5:0.5", str(dest), "--pattern", pattern]) == 0
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*.txt"))
    assert len(files) == 4
    assert all(re.fullmatch(r"(train|test)/(cat|dog)/[cd][01]\.txt", f) for f in files)
    copied = next(dest.rglob("c1.txt"))
    assert copied.read_text() == "cat 1"
    assert json.loads(copied.with_name("c1.txt.metadata.json").read_text()) == {"label": "cat", "size": 1}


def test_volume_command_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["volume", "init", str(tmp_path / "v")]) == 0
    assert main(["volume", "query", str(tmp_path / "v"), "label:"]) == 1
    err = capsys.readouterr().err
    assert "prefetch volume query: unexpected end of query at position 6" in err
    assert main(["volume", "log", str(tmp_path / "missing")]) == 1
    assert "is not a volume" in capsys.readouterr().err


def test_a_new_pool_sweeps_segments_of_dead_owners():
    from prefetch import Pool, Streamer

    from . import streams

    name = f"{_shm.PREFIX}{dead_pid()}_0badf00d"
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    try:
        with Pool(Streamer(streams.numbered, 0, 4), batch_size=4, workers=1):
            assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        _shm.unlink(name)


def _volume_add(tmp_path, stderr):
    from prefetch import Volume

    Volume.init(tmp_path / "vol").close()
    files = tmp_path / "files"
    files.mkdir()
    for i in range(300):
        (files / f"{i}.txt").write_text(str(i))
    return subprocess.run([sys.executable, "-m", "prefetch.cli", "volume", "add", str(tmp_path / "vol"), str(files)],
                          stdout=subprocess.PIPE, stderr=stderr, timeout=120)


def test_long_cli_work_shows_progress_on_a_terminal_and_nothing_when_piped(tmp_path):
    import pty

    master, slave = pty.openpty()
    try:
        proc = _volume_add(tmp_path / "a", slave)
        os.close(slave)
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0 and b"staged 300 data points" in proc.stdout
    assert re.search(rb"300/300 files, 0s left, [\d,]+/s", shown), shown[-300:]
    (tmp_path / "b").mkdir()
    piped = _volume_add(tmp_path / "b", subprocess.PIPE)
    assert piped.returncode == 0 and piped.stderr == b""

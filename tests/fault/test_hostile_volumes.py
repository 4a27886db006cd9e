"""Hostile volumes and a faulty environment: every byte of an index, a server or a user is distrusted.

Each test here failed on the code before the hardening it names (issue 10's items).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from prefetch import (
    CorruptIndexError,
    MetadataError,
    Volume,
    VolumeError,
    VolumeLockedError,
    bind_data_generator,
)
from prefetch.cli import main
from prefetch.volumes import index as index_module
from prefetch.volumes.cache import Cache

from ..volume_helpers import Server, make_volume


def tamper(index: Path, sql: str, *args) -> None:
    db = sqlite3.connect(index)
    db.execute(sql, args)
    db.commit()
    db.close()


def by_bytes(names, metadatas):
    return {"x": np.frombuffer(Path(names[0]).read_bytes()[:1], np.uint8)}


# --- 1. clone and add stay inside their folders -----------------------------------------------------------

@pytest.mark.parametrize("label", ["../../escaped", "/tmp/prefetch-absolute-escape", "a/../../../escaped"])
def test_clone_refuses_a_pattern_that_leaves_the_output_folder(tmp_path, label, capsys):
    vol = Volume.init(tmp_path / "vol")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"hi")
    vol.add({"f.bin": blob}, {"label": label}, id="p1")
    vol.commit("one")
    vol.close()
    out = tmp_path / "deep" / "er" / "out"
    assert main(["volume", "clone", str(tmp_path / "vol"), "", str(out), "--pattern", "$label/$@name"]) == 1
    err = capsys.readouterr().err
    assert "data point 'p1'" in err and ("refused" in err or "outside" in err), err
    assert not (tmp_path / "deep" / "escaped").exists() and not Path("/tmp/prefetch-absolute-escape").exists()
    assert not any(p.is_file() for p in tmp_path.rglob("f.bin") if out not in p.parents)


@pytest.mark.parametrize("bad", ["../../x", "/abs/x", "a/../../x", "a\\..\\x", "", "a/./b", "nul\0"])
def test_add_refuses_ids_and_file_names_that_are_not_plain_relative_paths(tmp_path, bad):
    vol = Volume.init(tmp_path / "vol")
    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    with pytest.raises(VolumeError, match="refused"):
        vol.add({"f": blob}, {}, id=bad)
    with pytest.raises(VolumeError, match="refused"):
        vol.add({bad: blob}, {}, id="ok")
    assert vol.query("@version:staging").points == []
    vol.close()


# --- 2. a served index cannot name local files ------------------------------------------------------------

@pytest.mark.parametrize("sha", ["../" * 12 + "etc/passwd", "../../../nowhere/x" + "0" * 40, "A" * 64, 5])
def test_a_served_index_cannot_reach_outside_the_cache(tmp_path, sha):
    make_volume(tmp_path, 3)[0].close()
    tamper(tmp_path / "vol" / "index.sqlite", "UPDATE points SET files = ?",
           json.dumps({"f.bin": {"sha256": sha, "size": 10}}))
    cache = tmp_path / "cache"
    with Server(tmp_path / "vol") as server:
        remote = Volume.open(server.url, cache_dir=cache)
        point = remote.query("").points[0]
        with pytest.raises(VolumeError, match="sha256 must be 64 lowercase hex"):
            remote.file(point, "f.bin")
        gen = bind_data_generator(remote, "", by_bytes, batch_size=1, workers=1, cache_dir=cache)
        with pytest.raises(Exception, match="sha256 must be 64 lowercase hex"):
            next(iter(gen.flow().train))
        gen.close()
        remote.close()
        assert main(["volume", "clone", server.url, "", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.bin"))
    assert not (tmp_path / "nowhere").exists() and not Path("/nowhere").exists()


def test_a_served_index_with_hostile_file_names_is_refused(tmp_path):
    make_volume(tmp_path, 2)[0].close()
    sha = hashlib.sha256(b"\0").hexdigest()
    tamper(tmp_path / "vol" / "index.sqlite", "UPDATE points SET files = ?",
           json.dumps({"../../evil": {"sha256": sha, "size": 1}}))
    vol = Volume.open(tmp_path / "vol")
    with pytest.raises(VolumeError, match=r"file name '\.\./\.\./evil' is refused"):
        _ = vol.query("").points[0].files
    vol.close()


# --- 3. concurrent adds never commit a wrong object --------------------------------------------------------

def _add_many(root: str, blob: str, tag: int) -> None:
    vol = Volume.open(root)
    for i in range(20):
        vol.add({"f": blob}, {"tag": tag, "i": i}, id=f"w{tag}-{i}")
    vol.close()


def test_processes_adding_the_same_file_leave_one_sound_object(tmp_path):
    Volume.init(tmp_path / "vol").close()
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(4 << 20))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path / "vol"), str(blob), t)) for t in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    objects = [p for p in (tmp_path / "vol" / "objects").rglob("*") if p.is_file()]
    assert [p.name for p in objects] == [hashlib.sha256(blob.read_bytes()).hexdigest()[2:]]
    assert hashlib.sha256(objects[0].read_bytes()).hexdigest()[2:] == objects[0].name
    vol = Volume.open(tmp_path / "vol")
    assert len(vol.query("@version:staging")) == 80
    vol.close()


def test_a_damaged_object_is_replaced_when_the_file_is_added_again(tmp_path):
    vol = Volume.init(tmp_path / "vol")
    blob = tmp_path / "blob"
    blob.write_bytes(b"good bytes")
    vol.add({"f": blob}, {}, id="a")
    sha = hashlib.sha256(b"good bytes").hexdigest()
    obj = tmp_path / "vol" / "objects" / sha[:2] / sha[2:]
    obj.write_bytes(b"evil bytes")
    vol.add({"f": blob}, {}, id="b")
    assert obj.read_bytes() == b"good bytes"
    vol.close()


def test_a_local_object_of_the_wrong_size_is_a_damaged_volume(tmp_path):
    vol, _ = make_volume(tmp_path, 3)
    point = vol.query("").points[2]
    sha = point.files["f2.bin"]["sha256"]
    (tmp_path / "vol" / "objects" / sha[:2] / sha[2:]).write_bytes(b"")
    with pytest.raises(VolumeError, match="holds 0 bytes, the index says 3; the volume is damaged"):
        vol.file(point, "f2.bin")
    vol.close()


# --- 4. a bad index download never replaces the good cached one -------------------------------------------

@pytest.mark.parametrize("served", ["html", "truncated"])
def test_a_bad_index_download_keeps_the_cached_index(tmp_path, served):
    _, version = make_volume(tmp_path, 10)
    index = tmp_path / "vol" / "index.sqlite"
    good = index.read_bytes()
    cache = tmp_path / "cache"
    with Server(tmp_path / "vol") as server:
        Volume.open(server.url, cache_dir=cache).close()
        index.write_bytes(b"<html><body>Sign in</body></html>" if served == "html" else good[: len(good) // 2])
        with pytest.warns(RuntimeWarning, match="not sound"):
            vol = Volume.open(server.url, cache_dir=cache)
        assert len(vol.query(f"@version:{version}")) == 10
        vol.close()
        with pytest.raises(CorruptIndexError):
            Volume.open(server.url, cache_dir=tmp_path / "fresh-cache")


# --- 5. concurrent commits and a busy index --------------------------------------------------------------

def _commit_after_adding(root: str, tag: int, barrier, results) -> None:
    vol = Volume.open(root)
    blob = Path(root).parent / f"blob{tag}"
    blob.write_bytes(bytes([tag]))
    vol.add({"f": blob}, {"tag": tag}, id=f"p{tag}")
    barrier.wait()
    try:
        results.put(vol.commit(f"from {tag}"))
    except VolumeError as exc:
        results.put(str(exc))


def test_concurrent_commits_never_fail_with_a_raw_error(tmp_path):
    Volume.init(tmp_path / "vol").close()
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_commit_after_adding, args=(str(tmp_path / "vol"), t, barrier, results))
             for t in range(2)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    versions = [o for o in outcomes if len(o) == 40]
    # either both committed, one on top of the other, or the first took both adds and the second had nothing
    assert len(versions) == 2 or any("nothing staged" in o for o in outcomes), outcomes
    vol = Volume.open(tmp_path / "vol")
    assert [v["id"] for v in vol.log()] == versions[::-1] or [v["id"] for v in vol.log()] == versions
    assert vol.log()[0]["count"] == 2
    vol.close()


def _hold_transaction(root: str, started, seconds: float, count: int) -> None:
    vol = Volume.open(root)
    blob = Path(root).parent / "held-blob"
    blob.write_bytes(b"held")
    with vol.transaction():
        started.set()
        for i in range(count):
            vol.add({"f": blob}, {"i": i}, id=f"held{i}")
            time.sleep(seconds / count)
    vol.close()


def test_a_busy_index_waits_then_names_the_lock_and_staging_is_all_or_none(tmp_path, monkeypatch):
    Volume.init(tmp_path / "vol").close()
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    holder = ctx.Process(target=_hold_transaction, args=(str(tmp_path / "vol"), started, 1.5, 200))
    holder.start()
    assert started.wait(10)
    blob = tmp_path / "mine"
    blob.write_bytes(b"mine")
    monkeypatch.setattr(index_module, "BUSY_S", 0.2)
    vol = Volume.open(tmp_path / "vol")
    with pytest.raises(VolumeLockedError, match="another process held the index"):
        vol.add({"f": blob}, {}, id="mine")
    vol.close()
    monkeypatch.setattr(index_module, "BUSY_S", 30.0)
    vol = Volume.open(tmp_path / "vol")
    vol.add({"f": blob}, {}, id="mine")  # waits for the transaction instead of failing
    version = vol.commit("mine and all 200 held ones")
    holder.join(10)
    assert len(vol.query(f"@version:{version}")) == 201
    vol.close()


# --- 6. a cached file changed after download is fetched again ---------------------------------------------

@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_cached_file_is_fetched_again(tmp_path, damage):
    make_volume(tmp_path, 20)[0].close()
    cache = tmp_path / "cache"
    with Server(tmp_path / "vol") as server:
        vol = Volume.open(server.url, cache_dir=cache)
        point = vol.query("n:19").points[0]
        path = vol.file(point, "f19.bin")
        good = path.read_bytes()
        bad = {"flip": bytes([good[0] ^ 1]) + good[1:], "truncate": good[:5], "empty": b""}[damage]
        os.chmod(path, 0o644)
        path.write_bytes(bad)
        assert vol.file(point, "f19.bin").read_bytes() == good
        vol.close()


# --- 7. eviction never takes a file handed out, and clears dead downloads ---------------------------------

def test_a_cache_smaller_than_the_read_ahead_loses_nothing(tmp_path):
    make_volume(tmp_path, 60)[0].close()
    with Server(tmp_path / "vol") as server:
        gen = bind_data_generator(server.url, "", by_bytes, batch_size=4, workers=2, cache_dir=tmp_path / "c",
                                  cache_limit=1, shuffle=False, drop_last=False)
        got = sorted(int(x) for batch in gen.flow().train for x in batch["x"][: batch.size, 0])
        gen.close()
    assert got == sorted(i % 256 for i in range(60))


def _evict(root: str) -> None:
    Cache(Path(root), limit=0).evict()


def test_another_process_eviction_leaves_held_files_and_removes_dead_downloads(tmp_path):
    cache = Cache(tmp_path / "c", limit=None)
    blobs = [bytes([i]) * 1000 for i in range(3)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    held = cache.hold(shas[0], 1000, lambda: [blobs[0]])
    cache.get(shas[1], 1000, lambda: [blobs[1]])
    dead = cache.path(shas[2]).with_name(f".{shas[2][2:]}.99999.dead.part")
    dead.parent.mkdir(parents=True, exist_ok=True)
    dead.write_bytes(b"half a download")
    os.utime(dead, (time.time() - 60, time.time() - 60))
    proc = multiprocessing.get_context("spawn").Process(target=_evict, args=(str(tmp_path / "c"),))
    proc.start()
    proc.join(30)
    assert held.path.read_bytes() == blobs[0], "a held file was evicted"
    assert not cache.path(shas[1]).exists() and not dead.exists()
    held.release()
    _evict(str(tmp_path / "c"))
    assert not held.path.exists()


# --- 8. a corrupt index is a named error, and the CLI prints it -------------------------------------------

def test_a_corrupt_index_is_a_named_error_and_no_cli_traceback(tmp_path):
    make_volume(tmp_path, 3)[0].close()
    index = tmp_path / "vol" / "index.sqlite"
    data = bytearray(index.read_bytes())
    data[100:4096] = os.urandom(3996)
    index.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError):
        Volume.open(tmp_path / "vol").query("label:cat")
    proc = subprocess.run([sys.executable, "-m", "prefetch.cli", "volume", "log", str(tmp_path / "vol")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "index" in proc.stderr
    index.write_text("not a database at all " * 100)
    with pytest.raises(CorruptIndexError):
        Volume.open(tmp_path / "vol")


# --- 18. metadata JSON cannot hold is refused at add ------------------------------------------------------

@pytest.mark.parametrize(("meta", "field"), [({"score": math.nan}, "score"), ({"a": {"b": [1, math.inf]}}, "a.b[1]"),
                                             ({"s": {1, 2}}, "s"), ({"d": {3: "x"}}, "d")])
def test_metadata_json_cannot_hold_is_refused_at_add_and_filters_keep_working(tmp_path, meta, field):
    vol, _ = make_volume(tmp_path, 5)
    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    with pytest.raises(MetadataError, match=rf"data point 'bad': metadata field {re.escape(field)}"):
        vol.add({"f": blob}, meta, id="bad")
    assert len(vol.query("n:<3 @version:staging")) == 3
    vol.close()


# --- 19. flow() always gives three loaders ---------------------------------------------------------------

def test_flow_without_split_gives_train_with_everything_and_empty_test_and_validation(tmp_path):
    make_volume(tmp_path, 10)[0].close()
    gen = bind_data_generator(str(tmp_path / "vol"), "", by_bytes, batch_size=5, workers=1)
    with warnings.catch_warnings():
        train, test, validation = gen.flow()
    assert len(train) == 2 and len(test) == 0 and len(validation) == 0
    assert list(test) == [] and list(validation) == []
    gen.close()

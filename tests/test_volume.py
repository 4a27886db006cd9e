"""Volumes: versions, every filter and operator against real data, split stability, cache and HTTP."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefetch import FetchError, QuerySyntaxError, Volume, VolumeError
from prefetch._sizes import parse_size
from prefetch.volumes.cache import Cache
from prefetch.volumes.query import Query
from prefetch.volumes.selection import select

from .volume_helpers import Server, make_volume


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    vol, version = make_volume(tmp_path_factory.mktemp("v"), 100)
    yield vol, version
    vol.close()


def ids(result):
    return [int(p.id[1:]) for p in result]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("label:cat", [i for i in range(100) if i % 3 == 0]),
        ('label:"dog"', [i for i in range(100) if i % 3 == 1]),
        ("n:42", [42]),
        ('n:"42"', []),
        ("n:>95", [96, 97, 98, 99]),
        ("n:>=95", [95, 96, 97, 98, 99]),
        ("n:<2", [0, 1]),
        ("n:<=2", [0, 1, 2]),
        ("n:[10 TO 13]", [10, 11, 12, 13]),
        ("n:{10 TO 13}", [11, 12]),
        ("n:[97 TO *]", [97, 98, 99]),
        ("label:(cat dog) AND n:<4", [0, 1, 3]),
        ("label:b?rd AND n:<10", [2, 5, 8]),
        ("label:*at AND n:<7", [0, 3, 6]),
        ("nested.a:3 AND n:<20", [3, 7, 11, 15, 19]),
        ("tags:t4 AND n:<20", [4, 9, 14, 19]),
        ("ok:true AND n:<5", [0, 2, 4]),
        ("ok:false AND n:<5", [1, 3]),
        ("maybe:null AND n:<30", [0, 7, 14, 21, 28]),
        ("NOT label:cat AND n:<5", [1, 2, 4]),
        ("n:1 n:2", [1, 2]),
        ("n:1 OR n:2 AND label:dog", [1]),
        ("(n:1 OR n:2) AND label:bird", [2]),
        ("missing:1", []),
        ("n:<13 @path:f1?.bin", [10, 11, 12]),
        ("@limit:3", [0, 1, 2]),
    ],
)
def test_filters_select_exactly(volume, query, expected):
    vol, _ = volume
    assert ids(vol.query(query)) == expected


def test_versions_are_immutable_and_addressable(tmp_path):
    vol, first = make_volume(tmp_path, 10)
    assert re.fullmatch(r"[0-9a-f]{40}", first)
    extra = tmp_path / "extra.bin"
    extra.write_bytes(b"new")
    vol.add({"e.bin": extra}, {"label": "fish", "n": 1000}, id="p9999")
    vol.add({"e.bin": extra}, {"label": "changed", "n": 0}, id="p0000")
    assert len(vol.query("@version:staging")) == 11
    assert len(vol.query("@version:head")) == 10
    second = vol.commit("more")
    assert second != first
    assert [v["id"] for v in vol.log()] == [second, first]
    assert vol.query(f"n:0 @version:{first[:8]}").points[0].metadata["label"] == "cat"
    assert vol.query("n:0").points[0].metadata["label"] == "changed"
    assert len(vol.query(f"@version:{first}")) == 10
    assert len(vol.query("@version:head")) == 11
    with pytest.raises(VolumeError, match="no version 'abcdef'"):
        vol.query("@version:abcdef")
    with pytest.raises(VolumeError, match="nothing staged"):
        vol.commit("empty")


def test_files_are_stored_once_by_content(tmp_path):
    vol = Volume.init(tmp_path / "v")
    f = tmp_path / "same.bin"
    f.write_bytes(b"x" * 100)
    for i in range(3):
        vol.add({"a.bin": f}, {"i": i}, id=str(i))
    vol.commit("three")
    objects = [p for p in (tmp_path / "v" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1
    assert objects[0].name == hashlib.sha256(b"x" * 100).hexdigest()[2:]


def test_split_fractions_and_empty_phases(volume):
    vol, _ = volume
    r = vol.query("@split:0.6:0.2:0.2")
    assert len(r.train) + len(r.test) + len(r.validation) == 100
    assert 45 <= len(r.train) <= 75
    r = vol.query("@split:0.5")
    assert r.test == [] and r.validation == [] and len(r) == len(r.train)
    assert all(p.phase == "train" for p in r)


def test_group_by_keeps_groups_in_one_phase(volume):
    vol, _ = volume
    r = vol.query("@split:0.5:0.5 @group_by:nested.a")
    phases = {}
    for p in r:
        phases.setdefault(p.metadata["nested"]["a"], set()).add(p.phase)
    assert all(len(s) == 1 for s in phases.values())


def test_sample_and_seed(volume):
    vol, _ = volume
    assert 5 <= len(vol.query("@sample:0.2")) <= 40
    assert ids(vol.query("@sample:0.3 @seed:1")) == ids(vol.query("@sample:0.3 @seed:1"))
    assert ids(vol.query("@sample:0.3 @seed:1")) != ids(vol.query("@sample:0.3 @seed:2"))


keys = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=60, unique=True)
fractions = st.tuples(st.floats(0, 0.5), st.floats(0, 0.3), st.floats(0, 0.2))


@given(keys, fractions, st.floats(0.05, 1), st.floats(0.05, 1), st.integers(0, 10**6))
def test_changing_sample_never_moves_a_point_between_phases(points, split, a, b, seed):
    """Selecting with @sample:a and @sample:b puts every point the two share in the same phase,
    and the smaller sample is contained in the larger (phase and sample hash independently)."""
    rows = [(key, "{}", "{}") for key in sorted(points)]

    def selected(sample):
        return {p.id: p.phase for p in select(rows, Query(split=split, sample=sample, seed=seed))}

    in_a, in_b = selected(a), selected(b)
    assert all(in_a[key] == in_b[key] for key in in_a.keys() & in_b.keys())
    if a <= b:
        assert in_a.keys() <= in_b.keys()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 30), st.sampled_from(["@split:0.5:0.3:0.2", "@split:0.6:0.2:0.2 @sample:0.5"]))
def test_adding_data_keeps_every_existing_point_in_its_phase(tmp_path_factory, extra, query):
    vol, _ = make_volume(tmp_path_factory.mktemp("grow"), 40)
    before = {p.id: p.phase for p in vol.query(query)}
    f = tmp_path_factory.mktemp("x") / "f.bin"
    f.write_bytes(b"1")
    for i in range(extra):
        vol.add({"f.bin": f}, {"label": "new", "n": 1000 + i}, id=f"new{i}")
    vol.commit("grow")
    after = {p.id: p.phase for p in vol.query(query)}
    assert all(after[key] == phase for key, phase in before.items())


def test_cache_verifies_writes_atomically_and_evicts_least_recently_used(tmp_path):
    cache = Cache(tmp_path / "c", limit=250)
    blobs = [bytes([i]) * 100 for i in range(4)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    for sha, blob in zip(shas[:2], blobs[:2], strict=True):
        assert cache.get(sha, 100, lambda b=blob: [b[:50], b[50:]]).read_bytes() == blob
    cache.get(shas[0], 100, lambda: pytest.fail("a cached file is fetched again"))  # read: now the most recent
    cache.get(shas[2], 100, lambda: [blobs[2]])
    cache.evict()
    assert cache.path(shas[0]).exists() and cache.path(shas[2]).exists()
    assert not cache.path(shas[1]).exists()
    with pytest.raises(VolumeError, match="arrived corrupted"):
        cache.get(shas[3], 100, lambda: [b"tampered"])
    assert not cache.path(shas[3]).exists()
    assert not [p for p in (tmp_path / "c").rglob("*.part")]


def test_cache_limit_sizes():
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(1234) == 1234
    assert parse_size(None) is None
    with pytest.raises(Exception, match="cache_limit"):
        parse_size("lots")


def test_http_volume_reads_and_a_pinned_version_stays_readable_offline(tmp_path):
    _, version = make_volume(tmp_path, 30)
    cache = tmp_path / "cache"
    with Server(tmp_path / "vol") as server:
        remote = Volume.open(server.url, cache_dir=cache)
        result = remote.query(f"label:dog @version:{version[:10]}")
        assert ids(result) == [i for i in range(30) if i % 3 == 1]
        point = result.points[0]
        assert remote.file(point, "f1.bin").read_bytes() == bytes([1]) * 2
        with pytest.raises(VolumeError, match="read only"):
            remote.add({"a": tmp_path / "vol-files" / "0.bin"})
        remote.close()
    offline = Volume.open(server.url, cache_dir=cache)
    again = offline.query(f"label:dog @version:{version[:10]}")
    assert ids(again) == ids(result)
    assert offline.file(again.points[0], "f1.bin").read_bytes() == bytes([1]) * 2
    offline.close()


def test_file_url_and_bad_volumes(tmp_path):
    vol, _ = make_volume(tmp_path, 3)
    assert len(Volume.open(f"file://{tmp_path / 'vol'}").query("")) == 3
    with pytest.raises(VolumeError, match="is not a volume"):
        Volume.open(tmp_path / "nowhere")
    with pytest.raises(VolumeError, match="not empty"):
        Volume.init(tmp_path / "vol")
    with pytest.raises(FetchError, match=r"cannot read http://127.0.0.1:9/none/index\.sqlite.*refused"):
        Volume.open("http://127.0.0.1:9/none", cache_dir=tmp_path / "c")
    with pytest.raises(QuerySyntaxError):
        vol.query("label:")


@pytest.mark.parametrize(("query", "expected"), [
    ("(" * 24 + "n:1" + " AND n:1)" * 24, [1]),
    ("n:(" + " ".join(str(i) for i in range(1200)) + ")", list(range(100))),
    (" OR ".join(f"f{i}:1" for i in range(1200)) + " OR n:3", [3]),
    ("n:123456789012345678901 OR n:3", [3]),
])
def test_deep_wide_and_huge_queries_are_answered(volume, query, expected):
    vol, _ = volume
    assert ids(vol.query(query)) == expected


def test_a_query_that_is_not_a_string_is_a_syntax_error(volume):
    vol, _ = volume
    for bad in (5, None, ["label:cat"]):
        with pytest.raises(QuerySyntaxError, match="a query is a string"):
            vol.query(bad)

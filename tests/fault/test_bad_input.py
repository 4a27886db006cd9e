"""Bad input: every malformed sample or argument gets a PrefetchError that says what and where."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefetch import DataError, Pool, PrefetchError, SchemaError, StochasticMux, Streamer

from .. import streams

ROOT = Path(__file__).resolve().parents[2]


def run(bad, at=5, n=20, **kwargs):
    with Pool(Streamer(streams.with_bad_sample, n, at, bad), batch_size=4, workers=2, **kwargs) as pool:
        return [int(y) for b in pool for y in b["y"]]


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"x": np.zeros(3, np.float32)}, SchemaError, r"missing \['y'\]"),
        ({"x": np.zeros(3, np.float32), "y": 1, "z": 2}, SchemaError, r"extra \['z'\]"),
        ({"x": np.zeros(3, np.float64), "y": 1}, SchemaError, r"field 'x' expected float32\[3\], got float64\[3\]"),
        ({"x": np.zeros(4, np.float32), "y": 1}, SchemaError, r"field 'x' expected float32\[3\], got float32\[4\]"),
        ({"x": np.zeros(3, np.float32), "y": float("nan")}, SchemaError, r"field 'y' expected int64\[\], got float64"),
        ({"x": "not an array", "y": 1}, SchemaError, r"field 'x' expected float32\[3\], got str"),
        ({"x": [1.0, 2.0, 3.0], "y": 1}, SchemaError, r"field 'x' expected float32\[3\], got list"),
        ([np.zeros(3, np.float32), 1], DataError, r"must be a dict or a tuple of fields, got list"),
        ((np.zeros(3, np.float32), 1), SchemaError, r"expected a dict sample, got tuple"),
        (None, DataError, r"must be a dict or a tuple of fields, got NoneType"),
    ],
)
def test_a_malformed_sample_names_stream_field_expected_and_actual(bad, error, match):
    with pytest.raises(error, match=match) as info:
        run(bad)
    assert "with_bad_sample" in str(info.value)
    assert type(info.value) is error


def test_a_first_sample_that_is_not_data_is_a_data_error():
    with pytest.raises(DataError, match="a sample must be a dict or a tuple of fields, got int"):
        run(42, at=0)


def test_python_scalars_that_fit_the_schema_are_accepted():
    assert run({"x": np.zeros(3, np.float32), "y": 7}) == [*range(5), 7, *range(6, 20)]


values = st.one_of(
    st.none(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=5), st.binary(max_size=5),
    st.lists(st.integers(0, 3), max_size=4),
    st.sampled_from([np.zeros(3, np.float32), np.zeros(3, np.float64), np.zeros((3, 1), np.float32),
                     np.zeros(0, np.float32), np.array(["a", "b", "c"]), np.zeros(3, object), np.int64(3),
                     np.float32(1.5), np.array(5)]),
)
samples = st.one_of(
    values,
    st.dictionaries(st.sampled_from(["x", "y", "z", 0]), values, max_size=4),
    st.tuples(values, values),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples, st.integers(0, 12))
def test_nothing_but_prefetch_errors_escape_for_any_malformed_sample(bad, at):
    """Whatever a stream yields, the pool delivers it (when it fits) or raises a PrefetchError."""
    try:
        with Pool(Streamer(streams.with_bad_sample, 13, at, bad), batch_size=4, workers=2) as pool:
            delivered = sum(batch.size for batch in pool)
    except PrefetchError:
        return
    assert delivered == 13


def test_more_workers_than_the_user_may_start_is_refused():
    script = textwrap.dedent("""
        import resource, prefetch
        from tests import streams
        resource.setrlimit(resource.RLIMIT_NPROC, (40, 40))
        try:
            prefetch.Pool(prefetch.Streamer(streams.endless, 0), batch_size=4, workers=100)
        except prefetch.ArgumentError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "workers=100 needs 101 processes" in out.stdout
    assert "RLIMIT_NPROC" in out.stdout


@pytest.mark.parametrize("bad_first", [False, True])
def test_a_malformed_sample_in_a_batch_of_several_streams_names_its_own_stream(bad_first):
    """One worker writes both streams' rows of each batch at once; the error names the stream of the bad sample."""
    good = Streamer(streams.with_bad_sample, 10**6, -1, None)
    bad = Streamer(streams.with_bad_sample, 10**6, 40, {"x": np.zeros(4, np.float32), "y": 1})
    mux = StochasticMux([bad, good] if bad_first else [good, bad], n_active=2, rate=None, random_state=1)
    with pytest.raises(SchemaError, match=r"float32\[3\], got float32\[4\]") as info, \
            Pool(mux, batch_size=64, workers=1) as pool:
        for _ in pool:
            pass
    assert str(info.value).startswith("stream Streamer(with_bad_sample, 1000000, 40, ")

"""prefetch.Pool end to end: real worker processes, ZeroMQ sockets and shared memory."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import prefetch
from prefetch import (
    ArgumentError,
    ChainMux,
    Pool,
    PoolClosedError,
    SchemaError,
    SlotsExhaustedError,
    StochasticMux,
    Streamer,
    WorkerDiedError,
    WorkerError,
)
from prefetch._pool import AUTO_SLOTS_MAX, auto_prefetch, default_prefetch

from . import streams


def ys(pool):
    return [int(y) for batch in pool for y in batch["y"]]


def keys(pool, limit=None):
    out = []
    for batch in pool:
        out.extend(batch["x"][:, 0].tolist())
        if limit is not None and len(out) >= limit:
            break
    return out[:limit] if limit else out


# --- delivery ---------------------------------------------------------------------------------------


def test_finite_stream_yields_every_sample_once_in_order():
    with Pool(Streamer(streams.numbered, 0, 1000), batch_size=64, workers=2) as pool:
        assert ys(pool) == list(range(1000))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_streams_spread_over_workers_produce_each_sample_exactly_once(workers):
    mux = StochasticMux([Streamer(streams.numbered, t, 300) for t in range(5)], n_active=2, rate=None,
                        mode="exhaustive", random_state=1)
    with Pool(mux, batch_size=50, workers=workers) as pool:
        got = keys(pool)
    assert sorted(got) == sorted(t * 1_000_000 + i for t in range(5) for i in range(300))


def test_pool_follows_the_same_sequence_as_the_mux_in_process():
    """A seeded mux gives the same rows through the pool, whatever the worker count."""

    def make():
        return StochasticMux([Streamer(streams.numbered, t, 50 * t + 7) for t in range(4)], n_active=2, rate=None,
                             weights=[1, 2, 3, 4], mode="exhaustive", random_state=42)

    expected = [int(s["x"][0]) for s in make()]
    for workers in (1, 2):
        with Pool(make(), batch_size=32, workers=workers) as pool:
            assert keys(pool) == expected


def test_same_seed_same_batches_and_another_seed_differs():
    def run(seed):
        mux = StochasticMux([Streamer(streams.global_random, t) for t in range(3)], n_active=2, rate=4)
        with Pool(mux, batch_size=32, workers=2, seed=seed) as pool:
            out = []
            for batch in pool:
                out.append(np.column_stack([batch["a"], batch["b"], batch["tag"]]).copy())
                if len(out) == 20:
                    return np.concatenate(out)

    first = run(7)
    np.testing.assert_array_equal(first, run(7))
    assert not np.array_equal(first, run(8))


def test_each_instance_keeps_its_global_rng_state_however_the_worker_interleaves_them():
    """Three endless instances in one worker, two drawing from the global RNGs (a legacy Gaussian now and then,
    so that a switch sometimes falls where one is cached) and one not: each gives what it gives alone from its
    seed, wherever the producer switched."""
    import random

    mux = StochasticMux([Streamer(streams.gaussian_walk, 0, 250), Streamer(streams.gaussian_walk, 2, 0),
                         Streamer(streams.gaussian_walk, 1, 260)], n_active=3, rate=None, random_state=4)
    rows = {0: [], 1: []}
    with Pool(mux, batch_size=64, workers=1, prefetch=2) as pool:
        for _, batch in zip(range(100), pool, strict=False):
            for tag, g, r, seed in zip(batch["tag"].tolist(), batch["g"].tolist(), batch["r"].tolist(),
                                       batch["seed"].tolist(), strict=True):
                if tag in rows:
                    rows[tag].append((g, r, seed))
    for tag, got in rows.items():
        assert len(got) > 500 and len({seed for _, _, seed in got}) == 1
        seed = got[0][2]
        np.random.seed(seed % 2**32)
        random.seed(seed)
        every = {0: 250, 1: 260}[tag]
        expected = [(np.random.randn() if i % every == 0 else 0.0, random.random()) for i in range(len(got))]
        assert [(g, r) for g, r, _ in got] == expected, tag


def test_weights_hold_through_the_pool():
    """100,000 rows: sd of a share near 0.5 is ~0.0016; the bound 0.01 is ~6 sd."""
    mux = StochasticMux([Streamer(streams.endless, t).replicated() for t in range(3)], n_active=3, rate=None,
                        weights=[0.5, 0.3, 0.2], random_state=3)
    counts = np.zeros(3)
    with Pool(mux, batch_size=250, workers=2) as pool:
        for i, batch in enumerate(pool):
            counts += np.bincount(batch["tag"], minlength=3)
            if i == 399:
                break
    np.testing.assert_allclose(counts / counts.sum(), [0.5, 0.3, 0.2], atol=0.01)


def test_nested_muxes_and_generated_streamers_run_in_workers():
    def make():
        inner = StochasticMux([Streamer(streams.numbered, t, 50) for t in range(2)], n_active=1, rate=7,
                              mode="exhaustive", random_state=5)
        return ChainMux([inner, Streamer(streams.numbered, 9, 30)])

    expected = [int(s["x"][0]) for s in make()]
    with Pool(make(), batch_size=16, workers=2) as pool:
        assert keys(pool) == expected


# --- zero copy and slot lifetime ----------------------------------------------------------------------


def test_batch_arrays_are_views_over_the_shared_segment():
    with Pool(Streamer(streams.endless, 1, 256), batch_size=8, workers=1) as pool:
        batch = next(iter(pool))
        segment = np.frombuffer(pool._res.segments[0].mapping, np.uint8)
        lo = segment.ctypes.data
        hi = lo + segment.nbytes
        for array in (batch["x"], batch["y"]):
            assert not array.flags.owndata
            assert lo <= array.ctypes.data < hi
            assert array.ctypes.data + array.nbytes <= hi
        assert os.path.exists(f"/dev/shm/{pool._res.segments[0].name}")
        del segment


def test_a_kept_view_never_changes_while_iteration_goes_on():
    with Pool(Streamer(streams.endless, 2), batch_size=16, workers=2, prefetch=3) as pool:
        it = iter(pool)
        kept = next(it)["x"][3:9]
        snapshot = kept.copy()
        for _, _batch in zip(range(60), it, strict=False):
            pass
        np.testing.assert_array_equal(kept, snapshot)
        assert pool.stats()["slots"]["held"] >= 1


def test_holding_every_slot_past_the_limit_raises_instead_of_hanging():
    with Pool(Streamer(streams.endless, 0), batch_size=4, workers=1, prefetch=2, shm_limit=1) as pool:
        it = iter(pool)
        held = [next(it), next(it)]
        with pytest.raises(SlotsExhaustedError, match=r"holds all 2 shared-memory slots .*shm_limit"):
            next(it)
        held[0].release()
        assert next(it).size == 4


def test_keeping_batches_grows_the_slots_and_every_kept_batch_stays_intact():
    with Pool(Streamer(streams.numbered, 0, 400), batch_size=8, workers=2) as pool:
        batches = list(pool)
        assert pool.stats()["slots"]["total"] >= 50
        assert [int(y) for b in batches for y in b["y"]] == list(range(400))
        first_segment = pool._res.segments[0].name
    assert not os.path.exists(f"/dev/shm/{first_segment}")


def test_growth_stops_at_shm_limit_and_a_restarted_worker_writes_into_grown_slots():
    with Pool(Streamer(streams.numbered, 0, 10**6), batch_size=4, workers=1, prefetch=2) as pool:
        it = iter(pool)
        kept = [next(it) for _ in range(9)]
        slot_bytes = pool._layout[1]
        assert pool.stats()["slots"]["total"] == 16
        os.kill(pool._res.processes[1][1].pid, 9)
        more = [next(it) for _ in range(20)]
        assert [int(y) for b in kept + more for y in b["y"]] == list(range(29 * 4))
        assert pool.stats()["slots"]["total"] == 32 and len(pool._res.segments) == 5
    with Pool(Streamer(streams.numbered, 0, 10**6), batch_size=4, workers=1, prefetch=2,
              shm_limit=4 * slot_bytes) as pool:
        it = iter(pool)
        kept = [next(it) for _ in range(4)]
        with pytest.raises(SlotsExhaustedError, match="holds all 4 shared-memory slots"):
            next(it)


@pytest.mark.parametrize("schema_known", [False, True])
def test_without_prefetch_small_batches_get_slots_by_their_bytes_and_every_sample_once(schema_known):
    """The first segment sizes the arena (auto_prefetch): the mux process plans into every slot."""
    schema = {"x": ("int64", (4,)), "y": ("int64", ()), "tag": ("int64", ())} if schema_known else None
    with Pool(Streamer(streams.numbered, 0, 40_000), batch_size=8, workers=2, schema=schema) as pool:
        it = iter(pool)
        ys = [int(y) for y in next(it)["y"]]
        slots, slot_bytes = pool.stats()["slots"]["total"], pool._layout[1]
        assert slots == auto_prefetch(2, slot_bytes, 2**40) == AUTO_SLOTS_MAX > default_prefetch(2)
        deadline = time.monotonic() + 20
        while sum(pool.stats()["samples"].values()) < 8 * slots and time.monotonic() < deadline:
            time.sleep(0.05)  # the mux plans a batch into every slot while this trainer holds one
        assert sum(pool.stats()["samples"].values()) >= 8 * slots
        ys += [int(y) for b in it for y in b["y"]]
    assert ys == list(range(40_000))
    assert len({name for name in os.listdir("/dev/shm") if name.startswith("prefetch_")}) == 0


def test_without_prefetch_large_batches_keep_the_fewest_slots():
    assert auto_prefetch(2, 40 * 2**20, 2**40) == default_prefetch(2) == 8
    assert auto_prefetch(2, 4 * 2**20, 2**40) == 32
    assert auto_prefetch(2, 100_000, 4 * 2**20) == 20  # half the room (2 MiB), the rest for kept batches
    # 1 MiB slots, and room for 8 MiB of them: the fewest (the room would hold 4)
    with Pool(Streamer(streams.numbered, 0, 64, 2**14), batch_size=8, workers=2, shm_limit=8 * 2**20) as pool:
        assert [int(y) for b in pool for y in b["y"]] == list(range(64))
        assert pool.stats()["slots"]["total"] == default_prefetch(2)


def test_set_weights_before_the_first_batch_waits_for_every_slot_the_arena_may_get():
    def run():
        mux = StochasticMux([Streamer(streams.endless, t) for t in range(2)], n_active=2, rate=None)
        with Pool(mux, batch_size=4, workers=2, seed=3) as pool:
            lag = pool.set_weights([1, 0])
            it = iter(pool)
            tags = [next(it)["tag"].tolist() for _ in range(lag + 3)]
        return lag, tags

    lag, tags = run()
    assert lag >= AUTO_SLOTS_MAX
    assert all(t == [0] * 4 for t in tags[lag:]) and any(1 in t for t in tags[:lag])
    assert run() == (lag, tags)


def test_keeping_every_batch_of_an_epoch_that_fills_every_slot_still_ends_it():
    with Pool(Streamer(streams.numbered, 0, 12), batch_size=4, workers=1, prefetch=3) as pool:
        batches = list(pool)
        assert [b["y"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_release_returns_the_slot_even_with_views_alive():
    with Pool(Streamer(streams.endless, 0), batch_size=4, workers=1, prefetch=2) as pool:
        it = iter(pool)
        for _ in range(10):
            batch = next(it)
            view = batch["x"]
            batch.release()
            with pytest.raises(PoolClosedError, match="released"):
                batch["x"]
        assert view.shape == (4, 4)


def test_views_stay_readable_after_close():
    pool = Pool(Streamer(streams.numbered, 0, 10), batch_size=10, workers=1)
    batch = next(iter(pool))
    pool.close()
    assert batch["y"].tolist() == list(range(10))
    assert not any(name.startswith("prefetch_") for name in os.listdir("/dev/shm"))


# --- epochs and last_batch ----------------------------------------------------------------------------


@pytest.mark.parametrize(("last_batch", "sizes"), [("partial", [64] * 15 + [40]), ("drop", [64] * 15),
                                                   ("pad", [64] * 15 + [40])])
def test_last_batch_modes_and_epochs(last_batch, sizes):
    with Pool(Streamer(streams.numbered, 0, 1000), batch_size=64, workers=2, last_batch=last_batch) as pool:
        for epoch in range(2):
            seen = [(b.size, b.index, b.epoch, len(b["y"]), b["y"][40:].tolist()) for b in pool]
            assert [s[0] for s in seen] == sizes
            assert [s[1] for s in seen] == list(range(len(sizes)))
            assert {s[2] for s in seen} == {epoch}
            if last_batch == "pad":
                assert seen[-1][3:] == (64, [0] * 24)
            elif last_batch == "partial":
                assert seen[-1][3:] == (40, [])


def test_breaking_out_and_iterating_again_continues_the_epoch():
    with Pool(Streamer(streams.numbered, 0, 100), batch_size=10, workers=1) as pool:
        first = []
        for batch in pool:
            first.extend(batch["y"].tolist())
            if len(first) == 30:
                break
        rest = ys(pool)
    assert first + rest == list(range(100))


def test_an_empty_source_gives_empty_epochs():
    with Pool(Streamer(streams.numbered, 0, 0), batch_size=8, workers=1, schema={"y": ("int64", ())}) as pool:
        assert list(pool) == []
        assert list(pool) == []


# --- schema, object fields, tuples ----------------------------------------------------------------------


def test_object_fields_travel_beside_the_batch():
    with Pool(Streamer(streams.with_objects, 20), batch_size=8, workers=2, last_batch="pad") as pool:
        batches = [(b["name"], b["raw"], b["x"].dtype) for b in pool]
    assert batches[0][0] == [f"item-{i}" for i in range(8)]
    assert batches[0][1][3] == bytes([3])
    assert batches[0][2] == np.float32
    assert batches[-1][0] == [f"item-{i}" for i in range(16, 20)] + [None] * 4


def test_tuple_samples_are_indexed_by_position():
    with Pool(Streamer(streams.pairs, 10), batch_size=5, workers=1) as pool:
        batch = next(iter(pool))
        assert batch[0].shape == (5, 2, 3)
        assert batch[1].tolist() == [0, 1, 2, 3, 4]


def test_schema_mismatch_names_stream_field_expected_and_actual():
    with Pool(Streamer(streams.bad_shape_at, 100, 37), batch_size=16, workers=2) as pool, \
            pytest.raises(SchemaError, match=r"bad_shape_at.*field 'x' expected float32\[3\], got float32\[4\]"):
        list(pool)


def test_given_schema_is_enforced():
    schema = {"x": ("float64", (3,))}
    with Pool(Streamer(streams.bad_shape_at, 10, 99), batch_size=4, workers=1, schema=schema) as pool, \
            pytest.raises(SchemaError, match=r"field 'x' expected float64\[3\], got float32\[3\]"):
        list(pool)


def test_a_sample_that_is_not_a_dict_or_tuple_is_reported():
    with Pool(Streamer(streams.not_a_sample, 10), batch_size=4, workers=1) as pool, \
            pytest.raises(prefetch.PrefetchError, match="must be a dict or a tuple"):
        list(pool)


# --- user code: transform, errors, worker_info ------------------------------------------------------------


def test_transform_runs_in_the_workers():
    with Pool(Streamer(streams.numbered, 0, 64), batch_size=16, workers=2, transform=streams.add_pid) as pool:
        pids = {int(p) for b in pool for p in b["pid"]}
    assert os.getpid() not in pids
    assert len(pids) == 1


def test_worker_error_carries_stream_worker_and_traceback():
    with Pool(Streamer(streams.raises_at, 100, 42), batch_size=8, workers=2) as pool, \
            pytest.raises(WorkerError) as info:
        list(pool)
    err = info.value
    assert "raises_at" in err.stream
    assert "sample 42" in str(err)
    assert "corrupt record 42" in err.traceback
    assert isinstance(err.original, ValueError)
    assert err.worker in (0, 1)


def test_on_error_skip_drops_and_counts():
    with Pool(Streamer(streams.numbered, 0, 100), batch_size=10, workers=2, transform=streams.fail_odd,
              on_error="skip") as pool:
        got = ys(pool)
        skipped = pool.stats()["skipped"]
    assert got == list(range(0, 100, 2))
    assert skipped >= 50


def test_replicas_get_distinct_worker_info_and_shard_a_finite_source():
    with Pool(Streamer(streams.sharded, 100).replicated(), batch_size=10, workers=2) as pool:
        rows = [(int(y), int(r), int(s)) for b in pool for y, r, s in zip(b["y"], b["replica"], b["seed"], strict=True)]
    assert sorted(y for y, _, _ in rows) == list(range(100))
    assert {r for _, r, _ in rows} == {0, 1}
    assert len({s for _, _, s in rows}) == 2
    assert prefetch.worker_info() is None


# --- control: set_weights, stats -------------------------------------------------------------------------


def test_set_weights_takes_effect_at_the_announced_batch_reproducibly():
    def run():
        mux = StochasticMux([Streamer(streams.endless, t) for t in range(2)], n_active=2, rate=None,
                            weights=[0.5, 0.5])
        with Pool(mux, batch_size=64, workers=2, seed=11) as pool:
            it = iter(pool)
            tags = [next(it)["tag"].copy() for _ in range(3)]
            lag = pool.set_weights([1, 0])
            tags += [next(it)["tag"].copy() for _ in range(lag + 5)]
        return lag, tags

    lag, tags = run()
    assert all(t.tolist() == [0] * 64 for t in tags[3 + lag:])
    assert any(1 in t for t in tags[:3])
    lag2, tags2 = run()
    assert lag2 == lag
    assert all(np.array_equal(a, b) for a, b in zip(tags, tags2, strict=True))


def test_set_weights_needs_a_weighted_mux():
    with Pool(Streamer(streams.endless, 0), batch_size=4, workers=1) as pool, \
            pytest.raises(ArgumentError, match="not a weighted mux"):
        pool.set_weights([1])


def test_stats_report_streams_batches_and_slots():
    mux = StochasticMux([Streamer(streams.endless, t) for t in range(2)], n_active=2, rate=None)
    with Pool(mux, batch_size=32, workers=2, prefetch=6) as pool:
        it = iter(pool)
        for _ in range(10):
            next(it)
        stats = pool.stats()
    assert stats["batches"] == 10
    assert sum(stats["samples"].values()) >= 320
    assert set(stats["worker_busy_fraction"]) <= {0, 1}
    assert 0.0 <= stats["trainer_wait_fraction"] <= 1.0
    slots = stats["slots"]
    assert slots["total"] == 6 and slots["free"] + slots["filling"] + slots["ready"] + slots["held"] == 6


# --- lifecycle -----------------------------------------------------------------------------------------------


def test_close_is_idempotent_and_iteration_after_close_raises():
    pool = Pool(Streamer(streams.endless, 0), batch_size=4, workers=2)
    next(iter(pool))
    pool.close()
    pool.close()
    with pytest.raises(PoolClosedError):
        next(iter(pool))


def test_a_worker_whose_producer_outlives_its_writer_exits_without_a_traceback(monkeypatch, capfd):
    """The producer thread may still finish a step after the writer closed their pipe; the process's last
    milliseconds are widened here to make that certain. Nothing may reach the user's stderr."""
    from prefetch import _worker

    close = _worker._Writer.close

    def close_then_linger(self):
        threading.excepthook = threading.__excepthook__  # pytest's hook would swallow what a user would see
        close(self)
        self.wake_r.close()
        time.sleep(0.3)

    monkeypatch.setattr(_worker._Writer, "close", close_then_linger)
    slow = [Streamer(streams.slow_start, t, 0.05) for t in range(4)]  # the look-ahead starts the next ones
    mux = StochasticMux(slow, n_active=1, rate=8, dist="constant", random_state=0)
    with Pool(mux, batch_size=8, workers=2, start_method="fork") as pool:  # forked workers inherit the patch
        next(iter(pool))  # then close while the producers are in the middle of start-ups
    time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err


def test_an_exception_in_the_training_loop_cleans_up():
    with pytest.raises(KeyboardInterrupt), Pool(Streamer(streams.endless, 0), batch_size=4, workers=2) as pool:
        for _ in pool:
            raise KeyboardInterrupt


def test_an_abandoned_pool_is_closed_by_garbage_collection():
    pool = Pool(Streamer(streams.endless, 0), batch_size=4, workers=2)
    next(iter(pool))
    del pool


def test_first_batch_arrives_quickly_and_the_pool_starts_again_after_close():
    for _ in range(2):
        with Pool(Streamer(streams.numbered, 0, 10), batch_size=5, workers=2) as pool:
            assert next(iter(pool))["y"].tolist() == [0, 1, 2, 3, 4]


def test_spawn_start_method_works():
    mux = StochasticMux([Streamer(streams.numbered, t, 40) for t in range(3)], n_active=3, rate=None,
                        mode="exhaustive", random_state=0)
    with Pool(mux, batch_size=16, workers=2, start_method="spawn") as pool:
        got = keys(pool)
    assert sorted(got) == sorted(t * 1_000_000 + i for t in range(3) for i in range(40))


def test_unpicklable_stream_under_spawn_fails_at_construction():
    stream = Streamer(lambda: iter([{"x": 1}]))
    with pytest.raises(ArgumentError, match=r"stream Streamer\(.*lambda.*cannot be pickled"):
        Pool(stream, batch_size=4, workers=1, start_method="spawn")


def test_a_killed_worker_is_reported_not_waited_on():
    with Pool(Streamer(streams.slow, 10_000, 0.01), batch_size=4, workers=1, max_restarts=0) as pool:
        it = iter(pool)
        next(it)
        _, worker = pool._res.processes[1]
        os.kill(worker.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match="worker 0 was killed by signal 9"):
            for _ in it:
                pass
        assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": 4, "prefetch": -1}, "prefetch must be an integer >= 1"),
        ({"batch_size": 4, "workers": 0}, "workers must be an integer >= 1"),
        ({"batch_size": 4, "last_batch": "keep"}, "last_batch must be"),
        ({"batch_size": 4, "on_error": "ignore"}, "on_error must be"),
        ({"batch_size": 4, "timeout": 0}, "timeout must be"),
        ({"batch_size": 4, "seed": -3}, "seed must be"),
        ({"batch_size": 4, "start_method": "teleport"}, "start_method must be one of"),
    ],
)
def test_invalid_pool_arguments(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        Pool(Streamer(streams.endless, 0), **kwargs)


def test_source_must_be_a_streamer():
    with pytest.raises(ArgumentError, match=r"source must be a prefetch\.Streamer"):
        Pool([1, 2, 3], batch_size=2)


def test_short_epochs_prefetched_ahead_stay_separate():
    """The mux fills later epochs while earlier ones are still being delivered; each epoch still ends."""
    with Pool(Streamer(streams.numbered, 0, 30), batch_size=10, workers=2, prefetch=16) as pool:
        time.sleep(0.3)
        for _ in range(4):
            assert ys(pool) == list(range(30))


def test_activations_of_a_finite_rate_mux_are_opened_ahead_of_need_and_reported():
    mux = StochasticMux([Streamer(streams.endless, t) for t in range(4)], n_active=2, rate=8)
    with Pool(mux, batch_size=16, workers=2, seed=1) as pool:
        for _, batch in zip(range(20), pool, strict=False):
            del batch
        stats = pool.stats()
    assert stats["activations_foreseen"] > 10
    assert stats["activations_foreseen_in_vain"] == 0


def test_rows_already_made_are_delivered_while_the_worker_is_stuck_starting_another_stream():
    """The look-ahead opens activation 1 (it stalls for a minute) on the only worker; activation 0's rows still come."""
    mux = StochasticMux([Streamer(streams.stalls_on_second_activation, 60)], n_active=1, rate=40, dist="constant")
    with Pool(mux, batch_size=8, workers=1, seed=0, timeout=10) as pool:
        it = iter(pool)
        got = [int(y) for _ in range(5) for y in next(it)["y"]]
        assert pool.stats()["activations_foreseen"] >= 1
    assert got == list(range(40))

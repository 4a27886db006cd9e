"""Checkpoint and resume: the batches after a resume equal, byte for byte, those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import time

import msgpack
import numpy as np
import pytest

from prefetch import (
    ArgumentError,
    ChainMux,
    Pool,
    RoundRobinMux,
    ShuffledMux,
    StochasticMux,
    Streamer,
    bind_data_generator,
)
from prefetch.testing import assert_resumes_exactly, take

from . import streams
from .volume_helpers import make_volume

# Checkpoints at the start, in the middle, just before and after the epoch boundary (epochs of 12 or 13 batches).
STEPS = [0, 5, 11, 12, 13, 14, 25]


def finite(t, n=60):
    return Streamer(streams.random_walk, t, n)


SOURCES = {
    "stochastic with replacement": lambda: StochasticMux([finite(t) for t in range(4)], n_active=2, rate=6),
    "stochastic single active": lambda: StochasticMux([finite(t) for t in range(4)], n_active=2, rate=6,
                                                      mode="single_active"),
    "stochastic exhaustive": lambda: StochasticMux([finite(t, 70 + t) for t in range(4)], n_active=2, rate=None,
                                                   mode="exhaustive", weights=[1, 2, 3, 4]),
    "shuffled": lambda: ShuffledMux([finite(t, 40) for t in range(3)], weights=[3, 2, 1]),
    "round robin": lambda: RoundRobinMux([finite(t, 50 + 10 * t) for t in range(3)], mode="permuted_cycle"),
    "chain of nested muxes": lambda: ChainMux([
        StochasticMux([finite(t, 50) for t in range(2)], n_active=1, rate=7, mode="exhaustive"),
        RoundRobinMux([finite(t, 40) for t in range(2, 4)])]),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_mux_resumes_exactly(name):
    make = SOURCES[name]

    def make_pool(state=None):
        return Pool(make(), batch_size=20, workers=2, seed=3, state=state)

    bounded = name in ("stochastic exhaustive", "round robin", "chain of nested muxes")
    assert_resumes_exactly(make_pool, [s for s in STEPS if not bounded or s < 12] + ([12, 13] if bounded else []))


def test_resume_after_set_weights_reweights_at_the_same_batch():
    def weighted_pool(state=None):
        mux = StochasticMux([Streamer(streams.endless, t) for t in range(3)], n_active=3, rate=None)
        return Pool(mux, batch_size=16, workers=2, seed=8, state=state)

    with weighted_pool() as pool:
        got = take(pool, 2)
        lag = pool.set_weights([1, 0, 0])
        got += take(pool, 3)
        state = json.loads(json.dumps(pool.state_dict()))
        got += take(pool, lag + 4)
    with weighted_pool(state=state) as pool:
        resumed = take(pool, lag + 4)
    assert [b["fields"]["tag"].tolist() for b in resumed] == [b["fields"]["tag"].tolist() for b in got[5:]]
    assert all(b["fields"]["tag"].tolist() == [0] * 16 for b in resumed[-3:])


def test_resume_just_before_at_and_after_an_epoch_boundary():
    def make_pool(state=None):
        mux = StochasticMux([finite(t, 100) for t in range(3)], n_active=3, rate=None, mode="exhaustive")
        return Pool(mux, batch_size=16, workers=2, seed=8, state=state)

    assert_resumes_exactly(make_pool, [0, 18, 19, 20, 21], after=6)


def test_resume_with_another_worker_count_is_exact_for_non_replicated_streams():
    def make_pool(state=None, workers=2):
        return Pool(StochasticMux([finite(t) for t in range(3)], n_active=2, rate=5), batch_size=10,
                    workers=workers, seed=1, state=state)

    with make_pool() as pool:
        reference = take(pool, 12)
    with make_pool() as pool:
        take(pool, 7)
        state = pool.state_dict()
    with make_pool(state=state, workers=3) as pool:
        resumed = take(pool, 5)
    assert [b["fields"]["x"].tobytes() for b in resumed] == [b["fields"]["x"].tobytes() for b in reference[7:]]


def test_resume_with_another_worker_count_refuses_when_order_depends_on_it():
    source = Streamer(streams.sharded, 400).replicated()
    with Pool(source, batch_size=10, workers=2, seed=1) as pool:
        take(pool, 3)
        state = pool.state_dict()
    with pytest.raises(ArgumentError, match="order depends on the worker count"):
        Pool(source, batch_size=10, workers=3, state=state)
    with pytest.raises(ArgumentError, match="batch_size=10"):
        Pool(source, batch_size=20, workers=2, state=state)
    with pytest.raises(ArgumentError, match="seed=1"):
        Pool(source, batch_size=10, workers=2, seed=2, state=state)
    with pytest.raises(ArgumentError, match=r"state must be a dict from Pool\.state_dict"):
        Pool(source, batch_size=10, workers=2, state={"consumed": 3})


def test_resume_after_a_worker_restart():
    def run(kill):
        with Pool(StochasticMux([finite(t, 200) for t in range(3)], n_active=3, rate=None), batch_size=10,
                  workers=2, seed=2) as pool:
            got = take(pool, 10)
            if kill:
                os.kill(pool._res.processes[1][1].pid, signal.SIGKILL)
                time.sleep(0.3)
            got += take(pool, 5)
            state = pool.state_dict()
        return got, state

    reference, _ = run(False)
    interrupted, state = run(True)
    assert [b["fields"]["x"].tobytes() for b in interrupted] == [b["fields"]["x"].tobytes() for b in reference]
    with Pool(StochasticMux([finite(t, 200) for t in range(3)], n_active=3, rate=None), batch_size=10,
              workers=2, state=state) as pool:
        after = take(pool, 5)
    with Pool(StochasticMux([finite(t, 200) for t in range(3)], n_active=3, rate=None), batch_size=10,
              workers=2, seed=2) as pool:
        full = take(pool, 20)
    assert [b["fields"]["x"].tobytes() for b in after] == [b["fields"]["x"].tobytes() for b in full[15:]]


def test_load_state_dict_before_iterating_and_not_after():
    def make():
        return Pool(StochasticMux([finite(t) for t in range(3)], n_active=2, rate=5), batch_size=10, workers=2,
                    seed=4)

    with make() as pool:
        reference = take(pool, 8)
        state = None
    with make() as pool:
        take(pool, 5)
        state = pool.state_dict()
        with pytest.raises(ArgumentError, match="before iterating"):
            pool.load_state_dict(state)
    with make() as pool:
        pool.load_state_dict(state)
        resumed = take(pool, 3)
    assert [b["fields"]["x"].tobytes() for b in resumed] == [b["fields"]["x"].tobytes() for b in reference[5:]]


def test_state_is_small_and_serialisable():
    """The state carries the policy (RNG, budgets, activation counts) and live positions: under 1 KB for 3 streams."""
    with Pool(StochasticMux([finite(t) for t in range(3)], n_active=2, rate=5), batch_size=10, workers=2) as pool:
        take(pool, 4)
        state = pool.state_dict()
    text = json.dumps(state)
    assert len(text) < 1000
    assert msgpack.unpackb(msgpack.packb(state)) == json.loads(text)
    assert state["consumed"] == 4 and state["epoch"] == 0 and state["index"] == 4
    assert len(state["mux"]["live"]) == 2


def by_id(file_names, metadatas):
    return {"y": np.int64(int(metadatas[0]["@id"][1:]))}


def test_volume_loaders_resume_exactly_with_any_worker_count(tmp_path):
    vol, version = make_volume(tmp_path, 90)
    vol.close()

    def loader(workers, state=None):
        gen = bind_data_generator(str(tmp_path / "vol"), f"@version:{version}", by_id, batch_size=8,
                                  drop_last=False, workers=workers, seed=5)
        loader, _, _ = gen.flow()
        loader.load_state_dict(state)
        return gen, loader

    def ids(loader, n):
        iter(loader)
        return [b["fields"]["y"][:b["size"]].tolist() for b in take(loader.pool, n)]

    gen, ref = loader(2)
    reference = ids(ref, 20)
    gen.close()
    for workers, step in [(2, 3), (3, 11), (1, 12), (2, 13)]:
        gen, first = loader(2)
        ids(first, step)
        state = first.state_dict()
        gen.close()
        gen, resumed = loader(workers, state)
        assert ids(resumed, 20 - step) == reference[step:], (workers, step)
        gen.close()


def test_four_ranks_side_by_side_partition_every_epoch(tmp_path):
    """Four ranks' pools run at once; each epoch they see disjoint, equal parts that cover the data."""
    vol, version = make_volume(tmp_path, 101)
    vol.close()
    gens = [bind_data_generator(str(tmp_path / "vol"), f"@version:{version}", by_id, batch_size=5,
                                drop_last=False, workers=1, seed=9, rank=rank, world_size=4) for rank in range(4)]
    loaders = [gen.flow().train for gen in gens]
    try:
        assert [len(loader) for loader in loaders] == [6] * 4
        epochs = []
        for _ in range(2):
            iterators = [iter(loader) for loader in loaders]
            parts: list[list[int]] = [[] for _ in loaders]
            for step in range(6):
                for rank, it in enumerate(iterators):
                    batch = next(it)
                    assert batch.index == step
                    parts[rank].extend(int(y) for y in batch["y"][:batch.size])
            assert all(next(it, None) is None for it in iterators)
            epochs.append(parts)
    finally:
        for gen in gens:
            gen.close()
    for parts in epochs:
        assert [len(p) for p in parts] == [26] * 4
        seen = [y for part in parts for y in part]
        assert set(seen) == set(range(101))
        assert len(seen) - len(set(seen)) == 3, "padding repeats at most world_size - 1 data points"
    assert epochs[0] != epochs[1]


def test_stream_sources_give_each_rank_distinct_seeds():
    tags = []
    for rank in range(2):
        with Pool(Streamer(streams.global_random, 0).replicated(), batch_size=8, workers=2, seed=1, rank=rank,
                  world_size=2) as pool:
            tags.append(take(pool, 2)[0]["fields"]["a"].tobytes())
    assert tags[0] != tags[1]


def test_rank_comes_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with Pool(Streamer(streams.endless, 0), batch_size=4, workers=1) as pool:
        assert (pool.options.rank, pool.options.world_size) == (1, 3)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ArgumentError, match="rank=3 must be below world_size=3"):
        Pool(Streamer(streams.endless, 0), batch_size=4, workers=1)

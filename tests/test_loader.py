"""bind_data_generator and flow(): every data point once per epoch, in an order workers cannot change."""

from __future__ import annotations

import time

import numpy as np
import pytest

import prefetch
from prefetch import ArgumentError, bind_data_generator

from .volume_helpers import Server, make_volume, mnist_like


def by_id(file_names, metadatas):
    """A sample whose y is the data point's number and x the first bytes of its file."""
    with open(file_names[0], "rb") as f:
        head = f.read(1)
    return {"y": np.int64(int(metadatas[0]["@id"][1:])), "x": np.frombuffer(head, np.uint8).copy(),
            "size": np.int64(metadatas[0]["@size"])}


def epoch_ids(loader):
    return [int(y) for b in loader for y in b["y"][:b.size]]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    vol, _ = make_volume(tmp_path_factory.mktemp("loader"), 100)
    yield vol
    vol.close()


def test_flow_gives_phases_each_point_once_per_epoch_reshuffled(volume):
    gen = bind_data_generator(volume, "@split:0.6:0.2:0.2", by_id, batch_size=8, drop_last=False, workers=2)
    train, test, validation = gen.flow()
    try:
        assert {p.id for p in train.points} | {p.id for p in test.points} | {p.id for p in validation.points} \
            == {f"p{i:04d}" for i in range(100)}
        first = epoch_ids(train)
        second = epoch_ids(train)
        assert sorted(first) == sorted(second) == sorted(int(p.id[1:]) for p in train.points)
        assert first != second, "epochs are reshuffled"
        assert sorted(epoch_ids(test)) == sorted(int(p.id[1:]) for p in test.points)
    finally:
        gen.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_order_does_not_depend_on_the_worker_count(volume, workers):
    def order(n):
        gen = bind_data_generator(volume, "label:(cat dog)", by_id, batch_size=6, drop_last=False, workers=n,
                                  seed=4)
        loader, _, _ = gen.flow()
        try:
            return [epoch_ids(loader) for _ in range(2)]
        finally:
            gen.close()

    assert order(workers) == order(2)


def test_drop_last_and_pad(volume):
    gen = bind_data_generator(volume, "n:<10", by_id, batch_size=4, drop_last=True, workers=2, shuffle=False)
    loader, _, _ = gen.flow()
    assert len(loader) == 2
    assert epoch_ids(loader) == list(range(8))
    gen.close()
    gen = bind_data_generator(volume, "n:<10", by_id, batch_size=4, drop_last=False, workers=2, shuffle=False)
    loader, _, _ = gen.flow()
    sizes = [(b.size, len(b["y"]), b["y"][2:].tolist()) for b in loader]
    assert sizes[-1] == (2, 4, [0, 0])
    assert len(loader) == 3
    gen.close()


def test_callback_gets_local_files_and_metadata(volume):
    gen = bind_data_generator(volume, "n:[3 TO 4]", by_id, batch_size=2, shuffle=False, workers=1)
    (batch,) = list(gen.flow().train)
    assert batch["x"][:, 0].tolist() == [3, 4]
    assert batch["size"].tolist() == [4, 5]
    gen.close()


def test_empty_phase_yields_nothing_without_starting_processes(volume):
    gen = bind_data_generator(volume, "@split:1.0", by_id, batch_size=4, workers=1)
    _, test, validation = gen.flow()
    assert list(test) == [] and list(validation) == [] and len(test) == 0
    gen.close()


def test_bad_arguments(volume):
    with pytest.raises(ArgumentError, match="deserialization_callback must be callable"):
        bind_data_generator(volume, "", None)
    with pytest.raises(ArgumentError, match="batch_size must be an integer >= 1"):
        bind_data_generator(volume, "", by_id, batch_size=0)
    with pytest.raises(prefetch.QuerySyntaxError):
        bind_data_generator(volume, "label:(cat", by_id)


def load_digit(file_names, metadatas):
    return np.load(file_names[0]), np.int64(metadatas[0]["label"])


def test_training_starts_at_once_behind_a_slow_server_and_reruns_from_cache(tmp_path):
    """2,000 files, 10 ms per request: the first batch needs only its own files; a second run needs no server."""
    vol, version = mnist_like(tmp_path, 2000)
    vol.close()
    cache = tmp_path / "cache"
    query = f"@version:{version} @split:0.8:0.2"
    with Server(tmp_path / "mnist", delay=0.01) as server:
        start = time.monotonic()
        gen = bind_data_generator(server.url, query, load_digit, batch_size=32, workers=2, cache_dir=cache)
        train, _, _ = gen.flow()
        it = iter(train)
        first = next(it)
        first_batch_s = time.monotonic() - start
        assert first[0].shape == (32, 28, 28)
        assert first_batch_s < 1.0
        seen = 32 + sum(b.size for b in it)
        gen.close()
    assert seen == len(train.points) // 32 * 32
    gen = bind_data_generator(server.url, query, load_digit, batch_size=32, workers=2, cache_dir=cache)
    train, _, _ = gen.flow()
    assert sum(b.size for b in train) == seen
    gen.close()

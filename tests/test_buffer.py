"""buffer_stream: batching samples field by field."""

from __future__ import annotations

import numpy as np
import pytest

from prefetch import ArgumentError, DataError, SchemaError, Streamer, buffer_stream


def parity(n):
    for i in range(n):
        yield {"x": np.asarray(i), "y": np.asarray(i % 2)}


def test_stacks_fields_on_a_new_axis():
    batches = list(buffer_stream(Streamer(parity, 10), 4))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[0]["x"], [0, 1, 2, 3])
    np.testing.assert_array_equal(batches[1]["y"], [0, 1, 0, 1])


def test_partial_last_batch_only_when_asked():
    assert [len(b["x"]) for b in buffer_stream(Streamer(parity, 10), 4, partial=True)] == [4, 4, 2]
    assert [len(b["x"]) for b in buffer_stream(Streamer(parity, 10), 4)] == [4, 4]


def test_axis_concatenates_existing_batches():
    def rows():
        for i in range(6):
            yield {"x": np.array([[i, i]])}

    (batch,) = buffer_stream(rows(), 6, axis=0)
    assert batch["x"].shape == (6, 2)


def test_tuples_are_stacked_by_position():
    samples = [(np.float32(i), np.array([i, i])) for i in range(3)]
    (batch,) = buffer_stream(samples, 3)
    assert isinstance(batch, tuple)
    assert batch[0].dtype == np.float32
    assert batch[1].shape == (3, 2)


@pytest.mark.parametrize(
    ("second", "match"),
    [
        ({"x": np.zeros(3)}, "missing \\['y'\\]"),
        ({"x": np.zeros(3), "y": 1, "z": 2}, "extra \\['z'\\]"),
        ({"x": np.zeros(4), "y": 1}, "field 'x' of sample 1 is float64\\[4\\], expected float64\\[3\\]"),
        ({"x": np.zeros(3, np.float32), "y": 1}, "field 'x' of sample 1 is float32"),
    ],
)
def test_disagreeing_samples_name_the_field(second, match):
    with pytest.raises(SchemaError, match=match):
        list(buffer_stream([{"x": np.zeros(3), "y": 0}, second], 2))


def test_non_data_sample_is_a_data_error():
    with pytest.raises(DataError, match="dict or a tuple"):
        list(buffer_stream([1, 2], 2))


@pytest.mark.parametrize("bad", [0, -3, 2.0, None])
def test_rejects_bad_buffer_size(bad):
    with pytest.raises(ArgumentError, match="buffer_size"):
        list(buffer_stream([], bad))

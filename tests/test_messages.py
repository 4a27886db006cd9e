"""Typed messages: each kind goes through its channel unchanged; foreign versions and kinds are refused."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetch import PrefetchError
from prefetch import _messages as m

CHANNELS = {m.ToWorker: m.TO_WORKER, m.FromWorker: m.FROM_WORKER, m.FromTrainer: m.FROM_TRAINER,
            m.ToTrainer: m.TO_TRAINER}
ALL = [(cls, direction) for direction, classes in m._CLASSES.items() for cls in classes.values()]
PLAIN = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text() | st.binary()
                     | st.floats(allow_nan=False), lambda inner: st.lists(inner, max_size=4), max_leaves=8)


def test_every_kind_of_every_direction_has_one_message_class():
    for direction, classes in m._CLASSES.items():
        assert sorted(classes) == sorted(int(k) for k in direction)


@pytest.mark.parametrize(("cls", "direction"), ALL, ids=[f"{d.__name__}.{c.__name__}" for c, d in ALL])
@given(data=st.data())
def test_a_message_survives_its_channel(cls, direction, data):
    fields = {f.name: data.draw(PLAIN) for f in dataclasses.fields(cls)}
    message = cls(**fields)
    channel = CHANNELS[direction]
    assert channel.decode(channel.encode(message)) == message


def test_a_message_of_another_protocol_version_is_refused():
    data = msgpack.packb([m.VERSION + 1, int(m.ToWorker.STOP)])
    with pytest.raises(PrefetchError, match="protocol version"):
        m.TO_WORKER.decode(data)


def test_an_unknown_kind_is_refused():
    data = msgpack.packb([m.VERSION, 99])
    with pytest.raises(PrefetchError, match="unknown ToWorker message kind 99"):
        m.TO_WORKER.decode(data)


def test_objects_msgpack_cannot_carry_travel_pickled():
    message = m.Ready([[0, 1, 0, 0, 1, [[{1, 2}]]]])
    assert m.TO_TRAINER.decode(m.TO_TRAINER.encode(message)).batches[0][5] == [[{1, 2}]]

"""The bytes on the wire: every control message between trainer, mux process and workers.

Messages are msgpack lists `[VERSION, kind, *fields]`. Sample data never travels
here, only the small object fields of samples (str, bytes, small objects), which
msgpack carries natively or, failing that, as pickled bytes in an ext type.
"""

from __future__ import annotations

import os
import pickle
from enum import IntEnum
from typing import Any

import msgpack
import zmq

from ._errors import PrefetchError

VERSION = 1
_PICKLED = 1


class Msg(IntEnum):
    """Message kinds. Arrows give the direction: T trainer, M mux process, W worker."""

    HELLO = 1
    """W->M (worker id, generation): the worker process is up; it ignores everything until RESET."""
    OPEN = 2
    """M->W (iid, leaf, replica, replicas, budget, seed, activation, window, pickled or None, skip): start an instance.

    The worker replays and drops its first `skip` samples (they were written before a restart), then keeps
    `window` samples ready ahead of the rows filled so far (never past `budget`)."""
    WANT = 3
    """M->W (iid, total): make at least the instance's first `total` samples ready (the mux is waiting)."""
    AVAIL = 4
    """W->M ([[iid, ready, ended], ...]): per instance, `ready` samples made so far; `ended` if no more come."""
    DESCRIBE = 5
    """M->W (iid): report the schema of the instance's first ready sample."""
    SCHEMA = 6
    """W->M, M->T (schema): the schema inferred from the first sample of the first batch."""
    SEGMENT = 7
    """T->M, M->W (name, schema, offsets, slot_bytes): the shared-memory slots now exist."""
    FILL = 8
    """M->W (slot, [[iid, rows bytes], ...]): write the next ready samples of each instance into these rows."""
    FILLED = 9
    """W->M (slot, object field values {row: [...]}, busy seconds): the rows are written."""
    CLOSE = 10
    """M->W (iid): drop an instance that will not be read again."""
    READY = 11
    """M->T (slot, seq, epoch, index, rows, object values per row): a batch is ready."""
    FREE = 12
    """T->M (slot): the trainer holds no view of the slot any more."""
    END = 13
    """M->T (epoch, batches): the epoch has no more batches."""
    EPOCH = 14
    """T->M (): start the next epoch."""
    WEIGHTS = 15
    """T->M (seq, weights): reweight the top-level mux from the batch with that sequence number on."""
    STATS = 16
    """T->M () and M->T (dict): ask for and return counters."""
    ERROR = 17
    """W->M, M->T (kind, message, stream, worker, traceback, pickled exception or None): user code failed."""
    SKIPPED = 18
    """W->M (count): samples dropped by on_error='skip' since the last report."""
    STOP = 19
    """T->M, M->W (): shut down."""
    RESET = 20
    """M->W (generation): what follows is the mux's view of this worker; drop anything received before."""
    SKIP = 21
    """M->W ([[iid, count], ...]): drop the next `count` samples of each instance (a resumed run skips ahead)."""


def _default(obj: Any) -> Any:
    return msgpack.ExtType(_PICKLED, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _PICKLED:
        return pickle.loads(data)
    return msgpack.ExtType(code, data)


def encode(kind: Msg, *fields: Any) -> bytes:
    """One message as bytes."""
    return msgpack.packb([VERSION, int(kind), *fields], default=_default, use_bin_type=True)


def send_while_parent_lives(sock: Any, message: bytes, parent_pid: int) -> bool:
    """Send on a socket with a send timeout, retrying while the parent process lives; False once it is gone.

    A send with no peer blocks for ever in ZeroMQ; the timeout turns that into a
    chance to notice that the trainer died and the peer will never come back.
    """
    while True:
        try:
            sock.send(message)
            return True
        except zmq.Again:
            if os.getppid() != parent_pid:
                return False


def decode(data: bytes) -> tuple[Msg, list[Any]]:
    """(kind, fields) of a message; a PrefetchError for a message from another protocol version."""
    version, kind, *fields = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    if version != VERSION:
        raise PrefetchError(f"message from protocol version {version}, this process speaks {VERSION}")
    return Msg(kind), fields

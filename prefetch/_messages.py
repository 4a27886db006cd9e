"""The messages between trainer, mux process and workers: each defined once, for its sender and its receiver.

A message is a frozen dataclass registered under one kind of the enum of each
direction it travels in. On the wire it is the msgpack list `[VERSION, kind,
*fields]`, in the dataclass's field order. Sample data never travels here, only
the small object fields of samples (str, bytes, small objects), which msgpack
carries natively or, failing that, as pickled bytes in an ext type.

Hot-path messages (Fill, Filled, Ready, Free, Avail) carry lists, so that a
process under load sends one message for all the work it has at hand.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from ._errors import PrefetchError

VERSION = 3
_PICKLED = 1


class ToWorker(IntEnum):
    """Mux process -> worker."""

    RESET = 1
    SEGMENT = 2
    OPEN = 3
    WANT = 4
    SKIP = 5
    FILL = 6
    CLOSE = 7
    DESCRIBE = 8
    STOP = 9


class FromWorker(IntEnum):
    """Worker -> mux process."""

    HELLO = 1
    AVAIL = 2
    SCHEMA = 3
    FILLED = 4
    ERROR = 5
    SKIPPED = 6


class FromTrainer(IntEnum):
    """Trainer -> mux process."""

    SEGMENT = 1
    FREE = 2
    EPOCH = 3
    WEIGHTS = 4
    STATS = 5
    STATE = 6
    STOP = 7


class ToTrainer(IntEnum):
    """Mux process -> trainer."""

    SCHEMA = 1
    READY = 2
    END = 3
    STATS = 4
    STATE = 5
    ERROR = 6


class Message:
    """Base of every message; `KINDS` maps each direction enum to this message's kind in it."""

    __slots__ = ()
    KINDS: ClassVar[dict[type[IntEnum], IntEnum]]


def _message(*kinds: IntEnum) -> Any:
    def register(cls: type) -> type:
        cls = dataclass(frozen=True, slots=True)(cls)
        cls.KINDS = {type(k): k for k in kinds}
        for kind in kinds:
            _CLASSES[type(kind)][int(kind)] = cls
        return cls
    return register


_CLASSES: dict[type[IntEnum], dict[int, type]] = {d: {} for d in (ToWorker, FromWorker, FromTrainer, ToTrainer)}


@_message(FromWorker.HELLO)
class Hello(Message):
    """The worker process (first or restarted) is up; it ignores everything until a Reset of its generation."""

    worker: int
    generation: int


@_message(ToWorker.RESET)
class Reset(Message):
    """What follows is the mux's view of this worker; drop anything received before."""

    generation: int


@_message(FromTrainer.SEGMENT, ToWorker.SEGMENT)
class Segment(Message):
    """Slots `first` .. `first + slots - 1` live in segment `name`: each `slot_bytes`, fields at `offsets`.

    The first segment (first=0) comes once the schema is known; later ones when the
    trainer keeps more batches than there are slots and the arena grows.
    """

    name: str
    schema: list[Any]
    offsets: list[int]
    slot_bytes: int
    slots: int
    batch_size: int
    first: int


@_message(ToWorker.OPEN)
class Open(Message):
    """Start an instance: leaf `leaf` (or the pickled streamer), at most `budget` samples.

    The worker drops its first `skip` samples (jumping with `seek` where it can), then
    keeps `window` samples ready ahead of the rows filled so far (never past `budget`).
    """

    iid: int
    leaf: int
    replica: int
    replicas: int
    budget: int | None
    seed: int
    activation: int
    window: int
    pickled: Any
    skip: int


@_message(ToWorker.WANT)
class Want(Message):
    """Make at least the instance's first `total` samples ready, and keep `window` ready from now on.

    The mux is waiting for them: the window it had did not cover the time a report
    takes to come back, so the mux sends a larger one (see InstanceTable.want).
    """

    iid: int
    total: int
    window: int


@_message(ToWorker.SKIP)
class Skip(Message):
    """Drop the next `count` samples of each instance, as [[iid, count], ...] (a replayed resume)."""

    counts: list[list[int]]


@_message(ToWorker.FILL)
class Fill(Message):
    """Write ready samples into rows: [[slot, [[iid, rows as uint32 bytes], ...]], ...]."""

    fills: list[list[Any]]


@_message(ToWorker.CLOSE)
class Close(Message):
    """Drop these instances: no row will be asked of them again."""

    iids: list[int]


@_message(ToWorker.DESCRIBE)
class Describe(Message):
    """Report the schema of the instance's first ready sample."""

    iid: int


@_message(ToWorker.STOP, FromTrainer.STOP)
class Stop(Message):
    """Shut down."""


@_message(FromWorker.AVAIL)
class Avail(Message):
    """Per instance, [[iid, samples made ready so far, ended], ...]."""

    reports: list[list[Any]]


@_message(FromWorker.SCHEMA, ToTrainer.SCHEMA)
class SchemaFound(Message):
    """The schema inferred from the first sample of the first batch (Schema.to_wire)."""

    schema: list[Any]


@_message(FromWorker.FILLED)
class Filled(Message):
    """These slots' rows are written: [[slot, {row: [object field values]}], ...]; the worker's busy seconds."""

    slots: list[list[Any]]
    busy: float


@_message(FromWorker.ERROR, ToTrainer.ERROR)
class Failure(Message):
    """User code (kind "user"), bad data ("schema") or prefetch itself ("internal") failed."""

    kind: str
    message: str
    stream: str | None
    worker: int
    traceback: str
    pickled: bytes | None


@_message(FromWorker.SKIPPED)
class Skipped(Message):
    """Samples dropped by on_error='skip' since the last report."""

    count: int


@_message(ToTrainer.READY)
class Ready(Message):
    """Batches ready, in order: [[slot, seq, epoch, index, rows, object values per row], ...]."""

    batches: list[list[Any]]


@_message(FromTrainer.FREE)
class Free(Message):
    """The trainer holds no view of these slots any more."""

    slots: list[int]


@_message(ToTrainer.END)
class End(Message):
    """The epoch has no more batches; it had `batches`."""

    epoch: int
    batches: int


@_message(FromTrainer.EPOCH)
class NextEpoch(Message):
    """Start the next epoch."""


@_message(FromTrainer.WEIGHTS)
class Weights(Message):
    """Reweight the top-level mux from the batch with sequence number `at` on."""

    at: int
    weights: list[float]


@_message(FromTrainer.STATS, ToTrainer.STATS)
class Stats(Message):
    """Asked with None; answered with the mux process's counters."""

    counters: dict[str, Any] | None


@_message(FromTrainer.STATE, ToTrainer.STATE)
class State(Message):
    """Asked with the number of batches consumed; answered with the mux's state at that batch (None: replay)."""

    seq: int
    state: dict[str, Any] | None


def _default(obj: Any) -> Any:
    return msgpack.ExtType(_PICKLED, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _PICKLED:
        return pickle.loads(data)
    return msgpack.ExtType(code, data)


class Channel:
    """Encoder and decoder of the messages of one direction."""

    def __init__(self, direction: type[IntEnum]) -> None:
        self.direction = direction
        self.classes = _CLASSES[direction]

    def encode(self, message: Message) -> bytes:
        kind = message.KINDS[self.direction]
        fields = [getattr(message, name) for name in message.__slots__]
        return msgpack.packb([VERSION, int(kind), *fields], default=_default, use_bin_type=True)

    def decode(self, data: bytes) -> Any:
        """The message; a PrefetchError for another protocol version or an unknown kind."""
        version, kind, *fields = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
        if version != VERSION:
            raise PrefetchError(f"message from protocol version {version}, this process speaks {VERSION}")
        cls = self.classes.get(kind)
        if cls is None:
            raise PrefetchError(f"unknown {self.direction.__name__} message kind {kind}")
        return cls(*fields)


TO_WORKER = Channel(ToWorker)
FROM_WORKER = Channel(FromWorker)
FROM_TRAINER = Channel(FromTrainer)
TO_TRAINER = Channel(ToTrainer)

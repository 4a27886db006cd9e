"""The worker process: runs stream instances and writes their samples into shared-memory rows.

The mux process tells a worker which instances to open (OPEN), how many samples of
each to make ready ahead of need (WANT), and which ready samples go to which rows of
which slots (FILL). Production is chunked and interleaved with message handling, so a
FILL never waits long behind read-ahead work; the slots of every FILL at hand are
reported in one FILLED.

    started ──HELLO──> unsynced (ignores all) ──RESET of its generation──> serving ──STOP──> exit
                                                                   (or the trainer is gone)
 Around each chunk the worker swaps in
the instance's own `random` and `numpy.random` state and its `worker_info()`, so an
instance yields the same samples whatever the timing and whatever else the worker runs.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import random
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from . import _shm
from ._errors import DataError, PrefetchError
from ._messages import (
    FROM_WORKER,
    TO_WORKER,
    Avail,
    Close,
    Describe,
    Failure,
    Fill,
    Filled,
    Hello,
    Message,
    Open,
    Reset,
    SchemaFound,
    Segment,
    Skip,
    Skipped,
    Stop,
    Want,
)
from ._process import parent_alive, send_while_parent_lives
from ._schema import RowWriter, Schema, infer
from ._streamer import Streamer
from ._worker_info import WorkerInfo, set_worker_info

CHUNK_SECONDS = 0.002
"""Longest stretch of sample production between two looks at incoming messages."""

RECONNECT_MS = 2
"""Retry interval of a connect that raced the mux process's bind (zmq's default is 100 ms)."""

PULL_STEP = 256
"""Most samples pulled from a stream between two looks at the clock."""

REPLAY_STEP = 1024
"""Samples replayed at a time when an instance skips ahead without `seek` (bounds the memory it takes)."""

PARENT_CHECK_MS = 500
"""How often a worker checks that its parent (the trainer) is still alive."""


@dataclass
class WorkerConfig:
    """What a worker needs to start; picklable for the spawn start method."""

    worker_id: int
    num_workers: int
    endpoint: str
    leaves: list[Streamer]
    transform: Callable[[Any], Any] | None
    on_error: str
    parent_pid: int
    generation: int = 0
    rank: int = 0
    world_size: int = 1


@dataclass
class _Instance:
    """One running activation of a stream: its generator, ready samples and RNG states."""

    iid: int
    name: str
    streamer: Streamer
    info: WorkerInfo
    iterator: Iterator[Any]
    budget: int | None
    window: int
    ready: deque = field(default_factory=deque)
    step: int = 1
    produced: int = 0
    wanted: int = 0
    ended: bool = False
    np_state: Any = None
    """This instance's `numpy.random` state while another instance's is loaded."""
    py_state: Any = None
    """This instance's `random` state while another instance's is loaded."""


class _Worker:
    def __init__(self, config: WorkerConfig, sock: zmq.Socket) -> None:
        self.config = config
        self.sock = sock
        self.instances: dict[int, _Instance] = {}
        self.queue: deque[int] = deque()
        self.writer: RowWriter | None = None
        self.slot_arrays: list[list[np.ndarray | None]] = []
        self.mapping: Any = None
        self.busy = 0.0
        self.skipped = 0
        self.rng_owner: _Instance | None = None
        self.synced = False
        self.updated: dict[int, _Instance] = {}
        self.filled: list[list[Any]] = []
        self.running = True

    def send(self, message: Message) -> None:
        """Send to the mux process; if it cannot be reached and the trainer is gone, exit."""
        if not send_while_parent_lives(self.sock, FROM_WORKER.encode(message), self.config.parent_pid):
            raise SystemExit(0)

    def run(self) -> None:
        self.send(Hello(self.config.worker_id, self.config.generation))
        next_check = time.monotonic() + PARENT_CHECK_MS / 1000
        while self.running:
            if time.monotonic() >= next_check:
                if not parent_alive(self.config.parent_pid):
                    return
                next_check = time.monotonic() + PARENT_CHECK_MS / 1000
            idle = not self.queue
            if self.sock.poll(PARENT_CHECK_MS if idle else 0):
                while self.running and self.sock.poll(0):
                    message = TO_WORKER.decode(self.sock.recv())
                    try:
                        self.handle(message)
                    except DataError as exc:
                        self.fail("schema", exc, None, f"worker {self.config.worker_id}")
                    except Exception as exc:
                        self.fail("internal", exc, None,
                                  f"worker {self.config.worker_id} handling {type(message).__name__}")
                self.report_filled()
            elif not idle:
                self.produce_round()

    def handle(self, message: Any) -> None:
        if not self.synced:
            self.synced = isinstance(message, Reset) and message.generation == self.config.generation
            return
        if isinstance(message, Fill):
            for slot, parts in message.fills:
                self.fill(slot, parts)
        elif isinstance(message, Want):
            inst = self.instances.get(message.iid)
            if inst is not None:
                inst.wanted = max(inst.wanted, message.total)
                self.schedule(inst)
        elif isinstance(message, Open):
            self.open(message)
        elif isinstance(message, Skip):
            for iid, count in message.counts:
                self.skip(self.instances[iid], count)
            self.report()
        elif isinstance(message, Close):
            for iid in message.iids:
                closed = self.instances.pop(iid, None)
                if closed is not None and closed is self.rng_owner:
                    self.rng_owner = None
        elif isinstance(message, Describe):
            inst = self.instances[message.iid]
            self.send(SchemaFound(infer(inst.ready[0], f"stream {inst.name}").to_wire()))
        elif isinstance(message, Segment):
            self.attach(message)
        elif isinstance(message, Stop):
            self.running = False

    def schedule(self, inst: _Instance) -> None:
        """Queue the instance for production once half its window of ready samples is used (or the mux waits).

        Refilling in large steps keeps switches between instances, and so RNG state swaps, rare.
        """
        asked = inst.wanted > inst.produced
        if not asked and len(inst.ready) > inst.window // 2:
            return
        consumed = inst.produced - len(inst.ready)
        target = max(inst.wanted, consumed + inst.window)
        if inst.budget is not None:
            target = min(target, inst.budget)
        inst.wanted = target
        if not inst.ended and inst.produced < target and inst.iid not in self.queue:
            self.queue.append(inst.iid)

    def open(self, m: Open) -> None:
        streamer = m.pickled if m.pickled is not None else self.config.leaves[m.leaf]
        config = self.config
        info = WorkerInfo(config.worker_id, config.num_workers, m.replica, m.replicas, m.seed, m.activation,
                          config.rank, config.world_size)
        inst = _Instance(m.iid, repr(streamer), streamer, info, streamer._iterate(m.budget), m.budget, m.window,
                         np_state=np.random.RandomState(m.seed % 2**32).get_state(),
                         py_state=random.Random(m.seed).getstate())
        self.instances[m.iid] = inst
        if m.skip:
            self.skip(inst, m.skip)
        else:
            self.schedule(inst)

    def skip(self, inst: _Instance, count: int) -> None:
        """Drop the instance's next `count` samples: ready ones first, then jump there or replay and drop.

        A restarted worker skips what was written before it died; a resumed pool skips
        what the trainer had already consumed.
        """
        drop = min(count, len(inst.ready))
        for _ in range(drop):
            inst.ready.popleft()
        count -= drop
        if count > 0 and not inst.ended and not self.jump(inst, inst.produced + count):
            target = inst.produced + count
            while inst.produced < target and not inst.ended:
                inst.wanted = min(target, inst.produced + REPLAY_STEP)
                if not self.produce(inst, time.perf_counter()):
                    return
                inst.ready.clear()
        inst.wanted = inst.produced
        self.updated[inst.iid] = inst
        self.schedule(inst)

    def jump(self, inst: _Instance, position: int) -> bool:
        """Restart the instance at `position` through the stream's `seek`, if it offers one."""
        self.use_rng_of(inst)
        set_worker_info(inst.info)
        try:
            jumped = inst.streamer.seek(position)
        except Exception as exc:
            self.fail("user", exc, inst, f"seek to sample {position} of stream {inst.name}")
            return True
        finally:
            set_worker_info(None)
        if jumped is None:
            return False
        left = None if inst.budget is None else max(0, inst.budget - position)
        inst.iterator = itertools.islice(jumped, left)
        inst.produced = position
        return True

    def produce_round(self) -> None:
        """Produce for the queued instances (within one chunk of time) and report them in one AVAIL."""
        start = time.perf_counter()
        for iid in list(self.queue):
            inst = self.instances.get(iid)
            if inst is not None and not inst.ended and inst.produced < inst.wanted and not self.produce(inst, start):
                return
            if inst is None or inst.ended or inst.produced >= inst.wanted:
                self.queue.remove(iid)
            if time.perf_counter() - start > CHUNK_SECONDS:
                break
        self.report()

    def report(self) -> None:
        """Tell the mux what production made ready (one AVAIL for every instance produced since)."""
        if self.skipped:
            self.send(Skipped(self.skipped))
            self.skipped = 0
        if self.updated:
            self.send(Avail([[i.iid, i.produced, i.ended] for i in self.updated.values()]))
            self.updated.clear()

    def report_filled(self) -> None:
        """After the messages at hand: what production made ready, then every slot written since the last report."""
        if self.filled:
            self.report()
            self.send(Filled(self.filled, self.busy))
            self.filled = []

    def use_rng_of(self, inst: _Instance) -> None:
        """Load the instance's `random` and `numpy.random` state, saving the previous owner's."""
        if self.rng_owner is inst:
            return
        owner = self.rng_owner
        if owner is not None:
            owner.np_state, owner.py_state = np.random.get_state(), random.getstate()
        np.random.set_state(inst.np_state)
        random.setstate(inst.py_state)
        self.rng_owner = inst

    def produce(self, inst: _Instance, start: float) -> bool:
        """Make ready some of the instance's wanted samples with its own RNG state; False if user code failed."""
        self.use_rng_of(inst)
        set_worker_info(inst.info)
        before = len(inst.ready)
        begin = time.perf_counter()
        try:
            self.pull(inst, start)
        except Exception as exc:
            self.fail("user", exc, inst, f"sample {inst.produced + len(inst.ready) - before} of stream {inst.name}")
            return False
        finally:
            inst.produced += len(inst.ready) - before
            self.updated[inst.iid] = inst
            set_worker_info(None)
            self.busy += time.perf_counter() - begin
        return True

    def pull(self, inst: _Instance, start: float) -> None:
        """Pull samples into `inst.ready` until wanted or out of time, a step at a time.

        With on_error="raise" a step is one `deque.extend` at C speed, and a short step
        means the stream ended. Steps grow while samples are cheap and shrink when they
        are slow, so a worker reports ready samples of a slow stream promptly. With
        "skip" samples are pulled one by one so that a failing transform drops only its
        sample (a failing generator cannot resume, so its stream ends there).
        """
        ready, transform = inst.ready, self.config.transform
        left = inst.wanted - inst.produced
        while left > 0:
            step = min(left, inst.step)
            began = time.perf_counter()
            if self.config.on_error == "skip":
                pulled = self.pull_skipping(inst, step)
            else:
                before = len(ready)
                source = itertools.islice(inst.iterator, step)
                ready.extend(source if transform is None else map(transform, source))
                pulled = len(ready) - before
            if pulled < step:
                inst.ended = True
                return
            left -= step
            now = time.perf_counter()
            if now - began < CHUNK_SECONDS / 4:
                inst.step = min(2 * inst.step, PULL_STEP)
            elif now - began > CHUNK_SECONDS:
                inst.step = max(1, inst.step // 2)
            if now - start > CHUNK_SECONDS:
                return

    def pull_skipping(self, inst: _Instance, step: int) -> int:
        """Pull up to `step` samples, dropping (and counting) those whose code raises; how many were pulled."""
        transform = self.config.transform
        for pulled in range(step):
            try:
                sample = next(inst.iterator)
            except StopIteration:
                return pulled
            except Exception:
                self.skipped += 1
                return pulled
            if transform is not None:
                try:
                    sample = transform(sample)
                except Exception:
                    self.skipped += 1
                    continue
            inst.ready.append(sample)
        return step

    def fail(self, kind: str, exc: BaseException, inst: _Instance | None, where: str) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            pickled = pickle.dumps(exc)
        except Exception:
            pickled = None
        self.send(Failure(kind, f"{where}: {type(exc).__name__}: {exc}", inst.name if inst else None,
                          self.config.worker_id, tb, pickled))
        self.queue.clear()

    def attach(self, segment: Segment) -> None:
        schema = Schema.from_wire(segment.schema)
        self.writer = RowWriter(schema)
        self.mapping = _shm.attach(segment.name)
        self.slot_arrays = [schema.views(self.mapping, s * segment.slot_bytes, segment.offsets, segment.batch_size)
                            for s in range(segment.slots)]

    def fill(self, slot: int, parts: list[list[Any]]) -> None:
        """Write a slot's samples into their rows: all parts at once, in row order, one call per field."""
        start = time.perf_counter()
        rows_by_part, samples, names = [], [], []
        inst = None
        try:
            for iid, rows in parts:
                inst = self.instances[iid]
                rows = np.frombuffer(rows, np.uint32)
                ready = inst.ready
                while len(ready) < len(rows) and not inst.ended:
                    inst.wanted = max(inst.wanted, inst.produced + len(rows) - len(ready))
                    if not self.produce(inst, time.perf_counter()):
                        return
                if len(ready) < len(rows):
                    raise PrefetchError(f"stream {inst.name} ended after {inst.produced} samples, before the rows "
                                        "it was assigned; it does not yield the same samples when restarted")
                rows_by_part.append(rows)
                samples += [ready.popleft() for _ in range(len(rows))]
                names.append(f"stream {inst.name}")
                self.schedule(inst)
            part = None
            rows = rows_by_part[0]
            if len(names) > 1:
                part = np.repeat(np.arange(len(names)), [len(r) for r in rows_by_part])
                rows = np.concatenate(rows_by_part)
                order = np.argsort(rows, kind="stable")
                rows, part = rows[order], part[order]
                samples = [samples[i] for i in order.tolist()]

            def where(i: int) -> str:
                return names[0 if part is None else part[i]]

            objects = self.writer.write_many(samples, rows, self.slot_arrays[slot], where)
        except (DataError, PrefetchError) as exc:
            self.fail("schema", exc, inst, f"worker {self.config.worker_id}")
            return
        self.busy += time.perf_counter() - start
        self.filled.append([slot, objects])

    def close(self) -> None:
        self.slot_arrays = []
        self.writer = None
        if self.mapping is not None:
            with contextlib.suppress(BufferError):
                self.mapping.close()


def worker_main(config: WorkerConfig) -> None:
    """Entry point of a worker process. Ctrl-C is the trainer's to handle: workers ignore SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"w%d" % config.worker_id)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
    sock.setsockopt(zmq.SNDTIMEO, PARENT_CHECK_MS)
    sock.connect(config.endpoint)
    worker = _Worker(config, sock)
    try:
        worker.run()
    finally:
        worker.close()
        sock.close(0)
        ctx.term()

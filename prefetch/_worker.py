"""The worker process: runs stream instances and writes their samples into shared-memory rows.

Two threads, one job each:

- the writer (the process's main thread) owns the socket. It takes the mux
  process's messages, writes the ready samples of each FILL into their rows, and
  reports what was made ready (AVAIL) and written (FILLED) in one multipart message;
- the producer runs user code: it opens instances, pulls samples ahead of need,
  skips and seeks. Around each pull it swaps in the instance's own `random` and
  `numpy.random` state and its `worker_info()`, so an instance yields the same
  samples whatever the timing and whatever else the worker runs.

So a stream that takes long to start, or stalls, never delays rows whose samples
are already made. The mux assigns rows only from samples a worker reported ready,
so a FILL waits on the producer only after a restart. The writer keeps the mux's
order: FILLs, CLOSEs and SKIPs are done first come, first served.

    started ──HELLO──> unsynced (ignores all) ──RESET of its generation──> serving ──STOP──> exit
                                                                   (or the trainer is gone)
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import itertools
import math
import operator
import os
import pickle
import queue
import random
import signal
import socket
import threading
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
from ._process import POLL_MS, die_with_parent, parent_alive, send_while_parent_lives
from ._schema import RowWriter, Schema, infer
from ._streamer import Streamer
from ._worker_info import WorkerInfo, set_worker_info

CHUNK_SECONDS = 0.002
"""Longest stretch of sample production between two looks at incoming commands."""

RECONNECT_MS = 2
"""Retry interval of a connect that raced the mux process's bind (zmq's default is 100 ms)."""

PULL_STEP = 256
"""Most samples pulled from a stream between two looks at the clock."""

REPLAY_STEP = 1024
"""Samples replayed at a time when an instance skips ahead without `seek` (bounds the memory it takes)."""

MID_STEP_MS = 10
"""While user code runs, how often the writer looks for samples it made (a stream may stall mid-step)."""

NEWS_SECONDS = 0.03
"""How long at most samples nobody waits for yet stay unreported: the writer sends them with its next report
(a FILLED, a failure, urgent news) or, failing one, alone this long after its last report, looking at least
this often while the producer has work.

Each report costs the writer a send and the mux process a receive and a planning
round, and a wake-up of the writer costs the producer a hand-over of the GIL: a slow
stream woken about every 2 ms lost a sixth of its time to them, and `mux-rate`
(whose producers never rest) spent about 8% less CPU per batch at 30 ms than at
10 ms. Samples the planner or a FILL waits for are urgent: the producer wakes the
writer as soon as they are made, and the writer sends them at once."""

_FIRST = operator.itemgetter(0)
"""The sample of a (sample, count) pair: zipping a stream with a counter counts its samples at C speed."""


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
    die_by_signal: bool = False
    """Ask the kernel to kill this worker when the trainer dies (see _process.die_with_parent)."""


@dataclass
class _Instance:
    """One running activation of a stream: its generator, ready samples and RNG states.

    The producer appends to `ready` (each sample as it is made) and counts `produced`;
    the writer pops from `ready` and counts `first`, so that it can report every ready
    sample, even while the producer is stuck in the middle of a step.
    """

    iid: int
    name: str
    streamer: Streamer
    info: WorkerInfo
    iterator: Iterator[Any]
    budget: int | None
    window: int
    seed: int
    ready: deque = field(default_factory=deque)
    step: int = 1
    produced: int = 0
    first: int = 0
    """Position in the stream of `ready[0]`; moved by whoever pops (the writer, or the producer during a SKIP)."""
    reported: int = 0
    """Samples made ready that the writer has reported to the mux."""
    wanted: int = 0
    asked: int = 0
    """Samples the writer asked the producer for (FILLs waiting, after a restart)."""
    ended: bool = False
    np_state: Any = None
    """This instance's `numpy.random` state while another instance's is loaded (None: not started yet)."""
    py_state: Any = None
    """This instance's `random` state while another instance's is loaded."""
    np_mark: bytes | None = None
    """The global numpy generator's raw state when this instance's was loaded (see `_np_mark`)."""

    @property
    def finished(self) -> bool:
        """It will produce no more samples."""
        return self.ended or (self.budget is not None and self.produced >= self.budget)


_MT19937_BYTES = 624 * 4 + 4
"""numpy's MT19937 raw state: 624 words and a position (numpy/random/src/mt19937/mt19937.h)."""
_marked: list[Any] = [None, 0]


_get_bit_generator = getattr(np.random, "get_bit_generator", None)  # numpy >= 1.25


def _np_mark() -> bytes | None:
    """The global numpy generator's raw state as bytes, read in place; None if it is not numpy's own MT19937
    (or numpy is too old to say), and then the state is always saved."""
    if _get_bit_generator is None:
        return None
    generator = _get_bit_generator()
    if type(generator) is not np.random.MT19937:
        return None
    if _marked[0] is not generator:  # keep a reference, so that its address stays valid
        _marked[:] = [generator, generator.ctypes.state_address]
    return ctypes.string_at(_marked[1], _MT19937_BYTES)


class _Producer:
    """The producer thread: every call into user code (streams, transform, seek) happens here.

    Commands come from the writer through `commands`, in the order the mux sent them.
    News for the writer (instances with more samples, failures) is posted under a lock
    and announced by a byte on `wake`.
    """

    def __init__(self, config: WorkerConfig, instances: dict[int, _Instance], wake: socket.socket) -> None:
        self.config, self.instances, self.wake = config, instances, wake
        self.commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.given = self.handled = 0
        """Commands queued (counted by the writer) and done (by this thread): one counter per thread."""
        self.queue: deque[int] = deque()
        self.lock = threading.Lock()
        self.updated: dict[int, _Instance] = {}
        self.failures: list[Failure] = []
        self.skipped = 0
        self.busy = 0.0
        self.rng_owner: _Instance | None = None
        self.awaited: dict[int, int] = {}
        """Samples someone waits for (the planner's WANT, a FILL after a restart): instance -> position."""
        self.urgent = False
        """Whether the news holds samples someone waits for: the writer sends it at once."""
        self.current: _Instance | None = None
        """The instance whose user code runs now: its samples appear in `ready` one by one."""
        self.thread = threading.Thread(target=self.run, name="prefetch-producer", daemon=True)

    def run(self) -> None:
        """Serve commands until STOP. A bug of ours in here is reported as the worker's failure: the thread
        would otherwise end silently, and the FILLs waiting for its samples with it."""
        try:
            self.serve()
        except Exception as exc:
            with self.lock:
                self.failures.append(failure("internal", exc, self.current, "the producer thread of worker "
                                             f"{self.config.worker_id}", self.config.worker_id))
            self.notify()

    def serve(self) -> None:
        while True:
            try:
                command = self.commands.get_nowait() if self.queue else self.commands.get(timeout=1.0)
            except queue.Empty:
                if self.queue:
                    self.produce_round()
                continue
            if command[0] == "stop":
                return
            self.handle(*command)
            self.handled += 1

    def command(self, *command: Any) -> None:
        """Queue a command for this thread: the only way the writer gives it work."""
        self.given += 1
        self.commands.put(command)

    def has_work(self) -> bool:
        """Whether this thread may make samples before the writer gives it another command."""
        return self.current is not None or bool(self.queue) or self.handled != self.given

    def handle(self, kind: str, *args: Any) -> None:
        if kind == "open":
            self.open(args[0])
        elif kind == "want":
            iid, total, window = args
            inst = self.instances.get(iid)
            if inst is not None:
                if total > inst.produced:
                    self.awaited[iid] = max(self.awaited.get(iid, 0), total)
                elif total:  # the planner waits for samples made but not reported yet
                    self.urge()
                inst.wanted = max(inst.wanted, total)
                inst.window = max(inst.window, window)
                self.schedule(inst)
        elif kind == "skip":
            counts, done = args
            for iid, count in counts:
                self.skip(self.instances[iid], count)
            done.set()
        elif kind == "close":
            for iid in args[0]:
                self.awaited.pop(iid, None)
                closed = self.instances.pop(iid, None)
                if closed is not None and closed is self.rng_owner:
                    self.rng_owner = None
        if kind == "skip" or self.failures:
            self.notify()

    def urge(self) -> None:
        """Wake the writer with news someone waits for."""
        with self.lock:
            self.urgent = True
        self.notify()

    def notify(self) -> None:
        """Wake the writer (a full pipe already will; a closed one means the writer has finished, and this
        thread, a daemon, ends with the process)."""
        with contextlib.suppress(OSError):
            self.wake.send(b"x")

    def news(self) -> tuple[list[_Instance], int, list[Failure], bool]:
        """For the writer: instances with news (and the one producing now), samples skipped, failures, and
        whether someone waits for the news."""
        with self.lock:
            updated, self.updated = self.updated, {}
            skipped, self.skipped = self.skipped, 0
            failures, self.failures = self.failures, []
            urgent, self.urgent = self.urgent, False
        current = self.current
        if current is not None:
            updated[current.iid] = current
        return list(updated.values()), skipped, failures, urgent

    def mark(self, inst: _Instance) -> None:
        with self.lock:
            self.updated[inst.iid] = inst

    def schedule(self, inst: _Instance) -> None:
        """Queue the instance for production once half its window of ready samples is used (or more is asked).

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
                         m.seed)
        if m.skip:
            self.skip(inst, m.skip)
        self.instances[m.iid] = inst
        self.schedule(inst)

    def skip(self, inst: _Instance, count: int) -> None:
        """Drop the instance's next `count` samples: ready ones first, then jump there or replay and drop.

        A restarted worker skips what was written before it died; a resumed pool skips
        what the trainer had already consumed.
        """
        drop = min(count, len(inst.ready))
        for _ in range(drop):
            inst.ready.popleft()
        inst.first += drop
        count -= drop
        if count > 0 and not inst.ended and not self.jump(inst, inst.produced + count):
            target = inst.produced + count
            while inst.produced < target and not inst.ended:
                inst.wanted = min(target, inst.produced + REPLAY_STEP)
                if not self.produce(inst, time.perf_counter()):
                    return
                inst.ready.clear()
        inst.wanted = inst.produced
        inst.first = inst.produced - len(inst.ready)
        self.mark(inst)

    def jump(self, inst: _Instance, position: int) -> bool:
        """Restart the instance at `position` through the stream's `seek`, if it offers one."""
        self.use_rng_of(inst)
        set_worker_info(inst.info)
        try:
            jumped = inst.streamer.seek(position)
        except Exception as exc:
            self.fail(exc, inst, f"seek to sample {position} of stream {inst.name}")
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
        """Produce for the queued instances, within one chunk of time."""
        start = time.perf_counter()
        for iid in list(self.queue):
            inst = self.instances.get(iid)
            if inst is not None and not inst.ended and inst.produced < inst.wanted and not self.produce(inst, start):
                return
            if inst is None or inst.ended or inst.produced >= inst.wanted:
                self.queue.remove(iid)
            if time.perf_counter() - start > CHUNK_SECONDS:
                break
        if self.reached():
            self.urge()

    def reached(self) -> bool:
        """Whether some instance has now made the samples someone waits for (or finished); forgets those."""
        done = [iid for iid, total in self.awaited.items()
                if (inst := self.instances.get(iid)) is None or inst.finished or inst.produced >= total]
        for iid in done:
            del self.awaited[iid]
        return bool(done)

    def use_rng_of(self, inst: _Instance) -> None:
        """Load the instance's `random` and `numpy.random` state, saving the previous owner's.

        An instance starts from its seed; the owner's state is saved only if it will
        produce again. numpy's get and set cost about 50 µs each, so the owner's
        numpy state is saved only if its user code moved the global generator since
        it was loaded (a raw comparison, under 1 µs); streams that draw from their own
        generators, as most do, then switch for the price of `random`'s state alone.
        A cached Gaussian (legacy `randn`) lives outside the raw state, so a state
        that holds one is always saved.
        """
        if self.rng_owner is inst:
            return
        owner = self.rng_owner
        if owner is not None and not owner.finished:
            kept = owner.np_mark is not None and owner.np_mark == _np_mark() and (
                owner.np_state is None or not owner.np_state[3])
            if not kept:
                owner.np_state = np.random.get_state()
            owner.py_state = random.getstate()
        if inst.np_state is None:
            np.random.seed(inst.seed % 2**32)
        else:
            np.random.set_state(inst.np_state)
        if inst.py_state is None:
            random.seed(inst.seed)
        else:
            random.setstate(inst.py_state)
        inst.np_mark = _np_mark()
        self.rng_owner = inst

    def produce(self, inst: _Instance, start: float) -> bool:
        """Make ready some of the instance's wanted samples with its own RNG state; False if user code failed."""
        self.use_rng_of(inst)
        set_worker_info(inst.info)
        begin = time.perf_counter()
        self.current = inst
        running = not inst.ended
        try:
            self.pull(inst, start)
        except Exception as exc:
            self.fail(exc, inst, f"sample {inst.produced} of stream {inst.name}")
            return False
        finally:
            self.current = None
            self.mark(inst)
            set_worker_info(None)
            self.busy += time.perf_counter() - begin
        if running and inst.ended:  # a stream's end changes what the planner does next: it waits for this
            self.urge()
        return True

    def pull(self, inst: _Instance, start: float) -> None:
        """Pull samples into `inst.ready` until wanted or out of time, a step at a time.

        With on_error="raise" a step is one list built at C speed, and a short step
        means the stream ended. Steps grow while samples are cheap and shrink when they
        are slow, so a worker reports ready samples of a slow stream promptly. With
        "skip" samples are pulled one by one so that a failing transform drops only its
        sample (a failing generator cannot resume, so its stream ends there).
        """
        transform = self.config.transform
        left = inst.wanted - inst.produced
        while left > 0:
            step = min(left, inst.step)
            began = time.perf_counter()
            if self.config.on_error == "skip":
                ended = self.pull_skipping(inst, step)
            else:
                # Each sample lands in `ready` as it is made (deque.extend appends one by one), counted at C
                # speed by zip's pull on `counter`; a stream that stalls mid-step holds back nothing it made.
                counter = itertools.count()
                source = itertools.islice(inst.iterator, step)
                try:
                    inst.ready.extend(map(_FIRST, zip(source if transform is None else map(transform, source),
                                                      counter, strict=False)))
                finally:
                    # what came before a failing sample stays ready, and `produced` then names the failing one
                    made = next(counter)
                    inst.produced += made
                ended = made < step
            if ended:
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

    def pull_skipping(self, inst: _Instance, step: int) -> bool:
        """Make up to `step` samples ready, dropping (and counting) those whose code raises; True at the end."""
        transform = self.config.transform
        for _ in range(step):
            try:
                sample = next(inst.iterator)
            except StopIteration:
                return True
            except Exception:
                self.count_skipped()
                return True
            if transform is not None:
                try:
                    sample = transform(sample)
                except Exception:
                    self.count_skipped()
                    continue
            inst.ready.append(sample)
            inst.produced += 1
        return False

    def count_skipped(self) -> None:
        with self.lock:
            self.skipped += 1

    def fail(self, exc: BaseException, inst: _Instance | None, where: str) -> None:
        with self.lock:
            self.failures.append(failure("user", exc, inst, where, self.config.worker_id))
        self.queue.clear()
        self.notify()


def failure(kind: str, exc: BaseException, inst: _Instance | None, where: str, worker: int) -> Failure:
    """The message that reports an exception to the trainer, with its traceback and the exception if it pickles."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled = pickle.dumps(exc)
    except Exception:
        pickled = None
    return Failure(kind, f"{where}: {type(exc).__name__}: {exc}", inst.name if inst else None, worker, tb, pickled)


class _Writer:
    """The writer: the worker's main thread, which owns the socket and the shared memory."""

    def __init__(self, config: WorkerConfig, sock: zmq.Socket,
                 attach: Callable[[Segment], Any] | None = None) -> None:
        self.config = config
        self.sock = sock
        self.map_segment = attach or (lambda segment: _shm.attach(segment.name))
        """The memory behind a segment's slots: the trainer's shared memory, or (a Ray actor's) its own."""
        self.instances: dict[int, _Instance] = {}
        self.wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        self.producer = _Producer(config, self.instances, wake_w)
        self.pending: deque[tuple[Any, ...]] = deque()
        """FILLs, CLOSEs, SKIPs and DESCRIBEs, done in order: a FILL waits for its samples, a SKIP for the producer."""
        self.writer: RowWriter | None = None
        self.slot_arrays: list[list[np.ndarray | None]] = []
        self.mappings: list[Any] = []
        self.busy = 0.0
        self.synced = False
        self.filled: list[list[Any]] = []
        self.unsent: dict[int, _Instance] = {}
        """Instances with samples made since the last AVAIL, held until a report goes out (see NEWS_SECONDS)."""
        self.sent = 0.0
        """When the last report went out."""
        self.messages: list[Message] = []
        self.running = True

    def send(self, messages: list[Message]) -> None:
        """Send to the mux process, in one multipart message; if it cannot be reached and the trainer is gone, exit."""
        frames = [FROM_WORKER.encode(m) for m in messages]
        if not send_while_parent_lives(self.sock, frames, self.config.parent_pid):
            raise SystemExit(0)

    def run(self) -> None:
        self.producer.thread.start()
        self.send([Hello(self.config.worker_id, self.config.generation)])
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        while self.running:
            events = dict(poller.poll(self.wait_ms()))
            if not events and not parent_alive(self.config.parent_pid):
                return
            if self.sock in events:
                while self.running and self.sock.poll(0):
                    for frame in self.sock.recv_multipart():
                        self.guarded(self.handle, TO_WORKER.decode(frame))
            if self.wake_r.fileno() in events:
                with contextlib.suppress(BlockingIOError):
                    self.wake_r.recv(4096, socket.MSG_DONTWAIT)
            self.guarded(self.advance)
            self.report()

    def wait_ms(self) -> int:
        """How long to wait for messages: while user code runs, MID_STEP_MS (a stream may stall mid-step);
        while the producer has work, NEWS_SECONDS; news held back, until NEWS_SECONDS after the last report.

        The producer gets work only through commands this thread gives it (OPEN, WANT, a refill), so a
        producer seen without work here stays so, and without news, until this thread looks again.
        """
        producer = self.producer
        if producer.current is not None:
            timeout = MID_STEP_MS
        elif producer.has_work():
            timeout = math.ceil(1000 * NEWS_SECONDS)
        else:
            timeout = POLL_MS
        if self.unsent or producer.updated:
            timeout = min(timeout, max(0, math.ceil(1000 * (self.sent + NEWS_SECONDS - time.perf_counter()))))
        return timeout

    def guarded(self, action: Callable[..., None], *args: Any) -> None:
        """Run a step of the writer; bad data, or a bug of ours, is reported to the trainer instead of exiting."""
        try:
            action(*args)
        except DataError as exc:
            self.fail("schema", exc)
        except Exception as exc:
            self.fail("internal", exc)

    def fail(self, kind: str, exc: BaseException, inst: _Instance | None = None) -> None:
        self.messages.append(failure(kind, exc, inst, f"worker {self.config.worker_id}", self.config.worker_id))
        self.pending.clear()

    def handle(self, message: Any) -> None:
        if not self.synced:
            self.synced = isinstance(message, Reset) and message.generation == self.config.generation
            return
        if isinstance(message, Fill):
            self.pending.extend(("fill", slot, parts) for slot, parts in message.fills)
        elif isinstance(message, Want):
            self.producer.command("want", message.iid, message.total, message.window)
        elif isinstance(message, Open):
            self.producer.command("open", message)
        elif isinstance(message, (Skip, Close, Describe)):
            self.pending.append((type(message).__name__.lower(), message))
        elif isinstance(message, Segment):
            self.attach(message)
        elif isinstance(message, Stop):
            self.running = False

    def advance(self) -> None:
        """Do the pending FILLs, CLOSEs, SKIPs and DESCRIBEs in order, as far as their samples allow."""
        while self.pending:
            item = self.pending[0]
            kind = item[0]
            if kind == "fill":
                if not self.fill(item[1], item[2]):
                    return
            elif kind == "close":
                self.producer.command("close", item[1].iids)
            elif kind == "skip":
                if len(item) == 2:
                    done = threading.Event()
                    self.producer.command("skip", item[1].counts, done)
                    self.pending[0] = (*item, done)
                if not self.pending[0][2].is_set():
                    return
            elif kind == "describe":
                inst = self.instances.get(item[1].iid)
                if inst is None or not inst.ready:
                    return
                self.messages.append(SchemaFound(infer(inst.ready[0], f"stream {inst.name}").to_wire()))
            self.pending.popleft()

    def report(self) -> None:
        """One message for the mux: failures, skipped samples, what was made ready, and the slots written.

        Samples made ready that nobody waits for yet wait for a report with more in it
        (a FILLED, urgent news) or NEWS_SECONDS: the planner asks (WANT) for what it
        lacks, and that is urgent.
        """
        changed, skipped, failures, urgent = self.producer.news()
        current = self.producer.current
        urgent = urgent or (current is not None and current.iid in self.producer.awaited)  # a stream mid-step
        unsent = self.unsent
        for inst in changed:
            unsent[inst.iid] = inst
        now = time.perf_counter()
        if not (urgent or failures or skipped or self.messages or self.filled
                or (unsent and now - self.sent >= NEWS_SECONDS)):
            return
        self.unsent = {}
        produced = []
        for inst in unsent.values():
            ended = inst.ended  # read first: once it is set, every sample of the instance is in `ready`
            ready = inst.first + len(inst.ready)
            if ready > inst.reported or ended:
                inst.reported = ready
                produced.append([inst.iid, ready, ended])
        messages = [*failures]
        if skipped:
            messages.append(Skipped(skipped))
        if produced:
            messages.append(Avail(produced))
        messages += self.messages
        self.messages = []
        if self.filled:
            messages.append(Filled(self.filled, self.busy + self.producer.busy))
            self.filled = []
        if messages:
            self.send(messages)
            self.sent = now

    def attach(self, segment: Segment) -> None:
        """Map a segment of the arena: the first one (with the schema), or one that the arena grew by."""
        schema = Schema.from_wire(segment.schema)
        if segment.first == 0:
            self.writer = RowWriter(schema)
            self.slot_arrays = []
        if segment.first != len(self.slot_arrays):
            raise PrefetchError(f"segment of slots from {segment.first} arrived after {len(self.slot_arrays)} slots")
        mapping = self.map_segment(segment)
        self.mappings.append(mapping)
        self.slot_arrays += [schema.views(mapping, s * segment.slot_bytes, segment.offsets, segment.batch_size)
                             for s in range(segment.slots)]

    def fill(self, slot: int, parts: list[list[Any]]) -> bool:
        """Write a slot's samples into their rows (all parts at once, in row order); False while some are not made.

        Samples missing (after a restart) are asked of the producer, and the FILL waits.
        """
        start = time.perf_counter()
        inst = None
        try:
            runs = []
            taken: dict[int, int] = {}  # samples of each instance this FILL takes: one may have several parts
            for iid, rows in parts:
                inst = self.instances.get(iid)
                rows = np.frombuffer(rows, np.uint32)
                taken[iid] = taken.get(iid, 0) + len(rows)
                if inst is None or len(inst.ready) < taken[iid]:
                    if inst is not None and inst.ended:
                        raise PrefetchError(f"stream {inst.name} ended after {inst.produced} samples, before the "
                                            "rows it was assigned; it does not yield the same samples when restarted")
                    if inst is not None:
                        need = inst.first + taken[iid]
                        if need > inst.asked:
                            inst.asked = need
                            self.producer.command("want", iid, need, 0)
                    return False
                runs.append((inst, rows))
            rows_by_part, samples, names, ends = [], [], [], []
            for inst, rows in runs:
                ready = inst.ready
                rows_by_part.append(rows)
                samples += [ready.popleft() for _ in range(len(rows))]
                ends.append(len(samples))
                inst.first += len(rows)
                names.append(f"stream {inst.name}")
                if len(ready) <= inst.window // 2 and not inst.finished:
                    self.producer.command("want", inst.iid, 0, 0)
            rows = rows_by_part[0] if len(runs) == 1 else np.concatenate(rows_by_part)

            def where(i: int) -> str:
                return names[bisect.bisect_right(ends, i)]

            objects = self.writer.write_many(samples, rows, self.slot_arrays[slot], where, ordered=len(runs) == 1)
        except (DataError, PrefetchError) as exc:
            self.fail("schema", exc, inst)
            return False
        self.busy += time.perf_counter() - start
        self.filled.append([slot, objects])
        return True

    def close(self) -> None:
        self.producer.command("stop")
        self.slot_arrays = []
        self.writer = None
        for mapping in self.mappings:
            with contextlib.suppress(BufferError):
                mapping.close()


def open_socket(ctx: zmq.Context, config: WorkerConfig, secure: Callable[[zmq.Socket], None] | None = None
                ) -> zmq.Socket:
    """The worker's socket to the mux process (or a Ray worker's relay), connected; `secure` sets keys first."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"w%d" % config.worker_id)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
    sock.setsockopt(zmq.SNDTIMEO, POLL_MS)
    if secure is not None:
        secure(sock)
    sock.connect(config.endpoint)
    return sock


def serve(config: WorkerConfig, attach: Callable[[Segment], Any] | None = None,
          secure: Callable[[zmq.Socket], None] | None = None, started: Callable[[_Writer], None] | None = None
          ) -> None:
    """Run a worker until STOP or until its parent is gone; `started` sees the writer before it runs."""
    ctx = zmq.Context()
    sock = open_socket(ctx, config, secure)
    worker = _Writer(config, sock, attach)
    if started is not None:
        started(worker)
    try:
        worker.run()
    finally:
        worker.close()
        sock.close(0)
        ctx.term()


def worker_main(config: WorkerConfig) -> None:
    """Entry point of a worker process. Ctrl-C is the trainer's to handle: workers ignore SIGINT.

    Once the trainer is gone the worker leaves with os._exit: a producer thread, or a
    volume loader's fetch thread, may be stuck in user code, and a normal exit would
    wait for them for ever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(config.parent_pid, config.die_by_signal)
    try:
        serve(config)
    finally:
        if not parent_alive(config.parent_pid):
            os._exit(0)

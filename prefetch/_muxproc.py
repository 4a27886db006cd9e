"""The mux process: runs the mux policy and the slot table, and moves only small messages.

It walks the top-level mux with the same driver as in-process iteration, but each
leaf stream it opens is a `RemoteInstance` living in a worker: pulling a row from
it only counts a sample the worker has made ready, and blocks (while serving other
messages) until the worker reports more. Rows of a slot are grouped by instance
into one FILL per worker; the slot is announced READY to the trainer, in order,
once every worker has filled its rows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from . import _shm
from ._mux import BLOCK, BaseMux, DriveControl
from ._streamer import Streamer
from ._wire import Msg, decode, encode, send_while_parent_lives

POLL_MS = 200
"""Longest wait for a message before the mux process checks that the trainer lives."""


class _Stop(Exception):
    """Unwinds the driver when the trainer asked the mux process to stop."""


@dataclass
class MuxConfig:
    """What the mux process needs to start; picklable for the spawn start method."""

    source: Streamer
    leaves: list[Streamer]
    placement: list[int | None]
    labels: list[str]
    num_workers: int
    batch_size: int
    slots: int
    last_batch: str
    worker_endpoint: str
    trainer_endpoint: str
    parent_pid: int
    seed: int
    segment: list[Any] | None
    resume_seq: int = 0
    weights_history: list[list[Any]] = field(default_factory=list)
    rank: int = 0


class RemoteInstance:
    """The mux-side view of one stream instance that runs in a worker."""

    __slots__ = ("__weakref__", "assigned", "budget", "ended", "filled", "iid", "known", "label", "open_args", "proc",
                 "requested", "worker")

    def __init__(self, proc: MuxProcess, iid: int, worker: int, budget: int | None, label: str,
                 open_args: list[Any]) -> None:
        self.proc, self.iid, self.worker, self.budget, self.label = proc, iid, worker, budget, label
        self.open_args = open_args
        self.known = self.assigned = self.requested = self.filled = 0
        self.ended = False

    def __iter__(self) -> Iterator[RemoteInstance]:
        return self

    def __next__(self) -> RemoteInstance:
        if self.assigned >= self.known and self.ensure(1) == 0:
            raise StopIteration
        self.assigned += 1
        return self

    def ensure(self, need: int) -> int:
        """Wait until `need` more samples are ready or the instance ended; how many are (at most need)."""
        if self.known - self.assigned < need and not self.ended:
            self.proc.want(self, need)
            self.proc.awaiting = self.worker
            while self.known - self.assigned < need and not self.ended:
                self.proc.pump(POLL_MS)
            self.proc.awaiting = None
        return min(need, self.known - self.assigned)

    def take(self, n: int) -> list[tuple[RemoteInstance, int]]:
        """Up to n rows at once; fewer only when the instance ends."""
        if self.assigned >= self.known:
            self.ensure(1)
        k = min(n, self.known - self.assigned)
        self.assigned += k
        return [(self, k)] if k else []

    def __del__(self) -> None:
        self.proc.closed.append((self.worker, self.iid))


class ReplicatedInstance:
    """One stream run as a replica per worker: the epoch's k-th batch takes its rows from replica k mod R.

    When that replica has ended, the next live one serves. Tying replicas to batches
    makes a batch of replicated streams the work of one worker (one FILL), and gives
    the same order as a stream that reads batches r, r + R, ... in replica r.
    """

    def __init__(self, proc: MuxProcess, replicas: list[RemoteInstance], budget: int | None) -> None:
        self.proc, self.replicas, self.budget = proc, replicas, budget
        self.count = 0

    def __iter__(self) -> Iterator[RemoteInstance]:
        return self

    def _order(self) -> list[RemoteInstance]:
        """The replicas to draw from for the current batch, the preferred one first, ended ones out."""
        k = self.proc.epoch_index % len(self.replicas)
        order = self.replicas[k:] + self.replicas[:k]
        return [r for r in order if not (r.ended and r.known <= r.assigned)]

    def _limit(self, n: int) -> int:
        return n if self.budget is None else min(n, self.budget - self.count)

    def ensure(self, need: int) -> int:
        """As RemoteInstance.ensure, over the replicas this batch draws from."""
        need, total = self._limit(need), 0
        for replica in self._order():
            if total >= need:
                break
            total += replica.ensure(need - total)
        return total

    def take(self, n: int) -> list[tuple[RemoteInstance, int]]:
        n, runs = self._limit(n), []
        for replica in self._order():
            while n > 0:
                got = replica.take(n)
                if not got:
                    break
                runs += got
                n -= got[0][1]
                self.count += got[0][1]
            if n == 0:
                break
        return runs

    def __next__(self) -> RemoteInstance:
        runs = self.take(1)
        if not runs:
            raise StopIteration
        return runs[0][0]


@dataclass
class _Filling:
    """A slot whose rows are being written by workers.

    It keeps each worker's FILL message and the instances it draws on, so that a
    restarted worker can be sent it again and no instance is closed while owed rows.
    """

    seq: int
    epoch: int
    index: int
    rows: int
    waiting: set[int]
    discard: bool
    messages: dict[int, bytes]
    parts: dict[int, list[tuple[RemoteInstance, int]]]
    objects: dict[int, list[Any]] = field(default_factory=dict)


class MuxProcess:
    def __init__(self, config: MuxConfig, ctx: zmq.Context) -> None:
        self.config = config
        self.workers = ctx.socket(zmq.ROUTER)
        self.trainer = ctx.socket(zmq.PAIR)
        for sock in (self.workers, self.trainer):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        self.workers.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.trainer.setsockopt(zmq.SNDTIMEO, POLL_MS)
        self.workers.bind(config.worker_endpoint)
        self.trainer.bind(config.trainer_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.workers, zmq.POLLIN)
        self.poller.register(self.trainer, zmq.POLLIN)
        self.leaf_index = {id(leaf): i for i, leaf in enumerate(config.leaves)}
        self.activations: Counter[int] = Counter()
        self.dynamic = 0
        self.next_iid = 0
        self.instances: weakref.WeakValueDictionary[int, RemoteInstance] = weakref.WeakValueDictionary()
        self.closed: list[tuple[int, int]] = []
        self.ahead = 16
        self.free: deque[int] = deque(range(config.slots))
        self.filling: dict[int, _Filling] = {}
        self.done: dict[int, tuple[int, _Filling]] = {}
        self.segment = config.segment
        self.described = config.segment is not None
        self.hello: set[int] = set()
        self.generation: dict[int, int] = {}
        self.down: set[int] = set()
        self.awaiting: int | None = None
        self.seq = 0
        self.next_ready = 0
        self.epoch = -1
        self.epoch_index = 0
        self.epoch_rows = 0
        self.driver: Any = None
        self.block: tuple[np.ndarray, dict[int, Any]] | None = None
        self.rows: Callable[[int], list[tuple[RemoteInstance, np.ndarray]]] = self.leaf_rows
        self.block_pos = 0
        self.block_sent: tuple[int, int | None] | None = None
        self.planned: tuple[list[tuple[RemoteInstance, np.ndarray]], int, bool] | None = None
        self.epoch_wanted = True
        self.failed = False
        self.stopping = False
        self.slot_row = 0
        self.epoch_ends: dict[int, tuple[int, int]] = {}
        self.pending_weights: dict[int, list[float]] = {int(at): w for at, w in config.weights_history}
        self.control = DriveControl(self.cap)
        self.samples: Counter[str] = Counter()
        self.skipped = 0
        self.busy: dict[int, float] = {}

    # --- messaging ---------------------------------------------------------------------------------

    def to_worker(self, worker: int, kind: Msg, *fields: Any) -> None:
        self.send_worker(worker, encode(kind, *fields))

    def send_worker(self, worker: int, message: bytes) -> None:
        """Send to a worker; a dead one loses the message, which its successor's resync makes up for."""
        if worker in self.down:
            return
        try:
            self.workers.send_multipart([b"w%d" % worker, message])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.down.add(worker)

    def to_trainer(self, kind: Msg, *fields: Any) -> None:
        """Send to the trainer; a send that cannot complete (the trainer is gone) stops the mux process."""
        if not send_while_parent_lives(self.trainer, encode(kind, *fields), self.config.parent_pid):
            self.stopping = True
            raise _Stop

    def pump(self, timeout_ms: int) -> None:
        """Handle every message that arrives within the timeout; check the trainer lives."""
        events = dict(self.poller.poll(timeout_ms))
        if not events and os.getppid() != self.config.parent_pid:
            self.stopping = True
        if self.workers in events:
            while self.workers.poll(0):
                ident, payload = self.workers.recv_multipart()
                self.on_worker(int(ident[1:]), *decode(payload))
        if self.trainer in events:
            while self.trainer.poll(0):
                self.on_trainer(*decode(self.trainer.recv()))
        self.flush_closed()
        if self.stopping:
            raise _Stop

    def flush_closed(self) -> None:
        """Tell workers about dropped instances, never ahead of FILLs still waiting for the segment."""
        if not self.closed or self.segment is None:
            return
        while self.closed:
            worker, iid = self.closed.pop()
            self.instances.pop(iid, None)
            if not self.stopping:
                self.to_worker(worker, Msg.CLOSE, iid)
        self.update_lookahead()

    def update_lookahead(self, opening: int = 0) -> None:
        """Samples a worker keeps ready per open instance: the slots' worth of rows, shared out."""
        share = self.config.slots * self.config.batch_size // max(1, len(self.instances) + opening)
        self.ahead = max(BLOCK, share)

    def on_worker(self, worker: int, kind: Msg, fields: list[Any]) -> None:
        if kind is Msg.AVAIL:
            for iid, ready, ended in fields[0]:
                inst = self.instances.get(iid)
                if inst is not None:
                    inst.known = max(inst.known, ready)
                    inst.ended = inst.ended or ended
        elif kind is Msg.FILLED:
            slot, objects, busy = fields
            self.busy[worker] = busy
            self.on_filled(slot, worker, objects)
        elif kind is Msg.HELLO:
            self.on_hello(worker, fields[1])
        elif kind is Msg.SCHEMA:
            self.to_trainer(Msg.SCHEMA, fields[0])
        elif kind is Msg.SKIPPED:
            self.skipped += fields[0]
        elif kind is Msg.ERROR:
            self.failed = True
            self.to_trainer(Msg.ERROR, *fields)

    def on_hello(self, worker: int, generation: int) -> None:
        """A worker process (first or restarted) is up: bring it to the state the mux expects of it.

        It gets the segment, every live instance it hosted reopened past the samples
        already written (replayed, so the rest come out identical), and every FILL it
        owes, in order. RESET first: the worker ignores whatever reached it before.
        """
        if generation <= self.generation.get(worker, -1):
            return
        self.generation[worker] = generation
        self.down.discard(worker)
        self.hello.add(worker)
        self.to_worker(worker, Msg.RESET, generation)
        if self.segment is not None:
            self.to_worker(worker, Msg.SEGMENT, *self.segment)
        for iid in sorted(self.instances.keys()):
            inst = self.instances.get(iid)
            if inst is not None and inst.worker == worker:
                inst.requested = inst.filled
                self.to_worker(worker, Msg.OPEN, *inst.open_args, inst.filled)
        for filling in sorted(self.filling.values(), key=lambda f: f.seq):
            if worker in filling.waiting and self.segment is not None:
                self.send_worker(worker, filling.messages[worker])

    def on_trainer(self, kind: Msg, fields: list[Any]) -> None:
        if kind is Msg.FREE:
            self.free.append(fields[0])
        elif kind is Msg.SEGMENT:
            self.segment = fields
            for w in range(self.config.num_workers):
                self.to_worker(w, Msg.SEGMENT, *fields)
            for filling in sorted(self.filling.values(), key=lambda f: f.seq):
                for worker, message in filling.messages.items():
                    self.send_worker(worker, message)
        elif kind is Msg.EPOCH:
            self.epoch_wanted = True
        elif kind is Msg.WEIGHTS:
            at, weights = fields
            self.pending_weights[at] = weights
        elif kind is Msg.STATS:
            self.to_trainer(Msg.STATS, self.stats())
        elif kind is Msg.STOP:
            self.stopping = True

    def stats(self) -> dict[str, Any]:
        return {
            "samples": dict(self.samples),
            "skipped": self.skipped,
            "worker_busy_seconds": {str(w): s for w, s in sorted(self.busy.items())},
            "waiting_on": sorted({w for f in self.filling.values() for w in f.waiting}
                                 | ({self.awaiting} if self.awaiting is not None else set())),
            "slots_free": len(self.free),
            "slots_filling": len(self.filling) + len(self.done),
            "epoch": self.epoch,
        }

    # --- stream instances -------------------------------------------------------------------------

    def open_child(self, child: Streamer, budget: int | None) -> Iterator[Any]:
        if isinstance(child, BaseMux):
            return child._drive(self.open_child, budget)
        return self.open_leaf(child, budget)

    def open_leaf(self, leaf: Streamer, budget: int | None) -> RemoteInstance | ReplicatedInstance:
        index = self.leaf_index.get(id(leaf))
        if index is None:
            key, pickled = len(self.config.leaves) + self.dynamic, leaf
            workers, label = [self.dynamic % self.config.num_workers], repr(leaf)
            self.dynamic += 1
        else:
            key, pickled, label = index, None, self.config.labels[index]
            placed = self.config.placement[index]
            workers = list(range(self.config.num_workers)) if placed is None else [placed]
        activation = self.activations[key]
        self.activations[key] += 1
        replicas = []
        for replica, worker in enumerate(workers):
            seed = int(np.random.SeedSequence(self.config.seed, spawn_key=(key, activation, replica, self.config.rank))
                       .generate_state(2, np.uint64)[0] >> np.uint64(1))
            iid = self.next_iid
            self.next_iid += 1
            own_budget = budget if len(workers) == 1 else None
            self.update_lookahead(1)
            args = [iid, -1 if index is None else index, replica, len(workers), own_budget, seed, activation,
                    self.ahead, pickled]
            inst = RemoteInstance(self, iid, worker, own_budget, label, args)
            self.instances[iid] = inst
            self.to_worker(worker, Msg.OPEN, *args, 0)
            replicas.append(inst)
        if len(replicas) == 1:
            return replicas[0]
        return ReplicatedInstance(self, replicas, budget)

    def want(self, inst: RemoteInstance, need: int) -> None:
        """Ask for more than the worker's window when the mux must wait for `need` samples."""
        target = inst.assigned + need
        if inst.budget is not None:
            target = min(target, inst.budget)
        if target > inst.requested:
            inst.requested = target
            self.to_worker(inst.worker, Msg.WANT, inst.iid, target)

    # --- epochs and slots -------------------------------------------------------------------------

    def cap(self, n: int) -> int:
        """Rows of choices the driver may draw now: none past the first row of a reweighted batch."""
        batch_size = self.config.batch_size
        for at in sorted(self.pending_weights):
            if at < self.seq or (at == self.seq and self.slot_row == 0):
                self.source_weights(self.pending_weights.pop(at))
                continue
            return max(1, min(n, (at - self.seq) * batch_size - self.slot_row))
        return n

    def source_weights(self, weights: list[float]) -> None:
        self.config.source.weights = np.asarray(weights, dtype=float)
        if self.control.policy is not None:
            self.control.policy.set_weights(self.config.source.weights)

    def start_epoch(self) -> None:
        self.epoch += 1
        self.epoch_index = 0
        self.epoch_rows = 0
        source = self.config.source
        self.block = None
        self.block_sent = None
        if not isinstance(source, BaseMux):
            self.driver, self.rows = self.open_leaf(source, None), self.leaf_rows
        elif isinstance(source.streamers, list) and any(isinstance(c, BaseMux) for c in source.streamers):
            self.driver, self.rows = source._drive(self.open_child, None, self.control), self.row_by_row
        else:
            self.driver, self.rows = source._blocks(self.open_child, None, self.control), self.block_rows

    def leaf_rows(self, n: int) -> list[tuple[RemoteInstance, np.ndarray]]:
        """rows() when the source is one stream: runs of rows straight from its instance (or replicas)."""
        parts, filled = [], 0
        while filled < n:
            runs = self.driver.take(n - filled)
            if not runs:
                break
            for inst, k in runs:
                parts.append((inst, np.arange(filled, filled + k)))
                filled += k
        return parts

    def row_by_row(self, n: int) -> list[tuple[RemoteInstance, np.ndarray]]:
        """rows() for nested muxes: the in-process driver yields one row's instance at a time."""
        rows: dict[RemoteInstance, list[int]] = {}
        for row in range(n):
            try:
                inst = next(self.driver)
            except StopIteration:
                break
            self.slot_row += 1
            rows.setdefault(inst, []).append(row)
        return [(inst, np.array(r)) for inst, r in rows.items()]

    def block_rows(self, n: int) -> list[tuple[RemoteInstance, np.ndarray]]:
        """rows() for a mux of leaf streams: whole blocks of stream choices at a time, with numpy."""
        parts: list[tuple[RemoteInstance, np.ndarray]] = []
        filled = 0
        while filled < n:
            if self.block is None:
                try:
                    step = next(self.driver) if self.block_sent is None else self.driver.send(self.block_sent)
                except StopIteration:
                    break
                self.block, self.block_pos, self.block_sent = step, 0, None
            choices, opened = self.block
            segment = choices[self.block_pos:self.block_pos + n - filled]
            needs = np.bincount(segment)
            cut, exhausted = len(segment), None
            for j in np.flatnonzero(needs).tolist():
                need = int(needs[j])
                have = opened[j][0].ensure(need)
                if have < need:
                    at = int(np.flatnonzero(segment == j)[have])
                    if at < cut:
                        cut, exhausted = at, j
            taken = segment[:cut]
            order = np.argsort(taken, kind="stable") + filled
            start = 0
            for j, count in enumerate(np.bincount(taken).tolist()):
                if count:
                    rows, start = order[start:start + count], start + count
                    first = 0
                    for inst, k in opened[j][0].take(count):
                        parts.append((inst, rows[first:first + k]))
                        first += k
            filled += cut
            self.slot_row += cut
            self.block_pos += cut
            if exhausted is not None or self.block_pos == len(choices):
                self.block_sent = (self.block_pos, exhausted)
                self.block = None
        return parts

    def plan(self) -> tuple[list[tuple[RemoteInstance, np.ndarray]], int, bool]:
        """The rows of the next batch of the epoch as (parts, rows, ended)."""
        self.slot_row = 0
        parts = self.rows(self.config.batch_size)
        rows = sum(len(r) for _, r in parts)
        return parts, rows, rows < self.config.batch_size

    def count(self, parts: list[tuple[RemoteInstance, np.ndarray]], rows: int, ended: bool) -> bool:
        """Book a planned batch; True when it is a short last batch to drop."""
        for inst, r in parts:
            self.samples[inst.label] += len(r)
        discard = ended and self.config.last_batch == "drop"
        self.seq += 1
        self.epoch_index += 0 if discard else 1
        self.epoch_rows += rows
        return discard

    def end_epoch(self) -> None:
        """The epoch's last batch is planned: announce its end once every batch before is ready."""
        self.driver = None
        if self.next_ready == self.seq:
            self.to_trainer(Msg.END, self.epoch, self.epoch_index)
        else:
            self.epoch_ends[self.seq] = (self.epoch, self.epoch_index)
        self.epoch_wanted = self.epoch_rows > 0

    def assign(self, slot: int, parts: list[tuple[RemoteInstance, np.ndarray]], rows: int, ended: bool) -> None:
        """Fill one slot with a planned batch: send each worker its FILL."""
        if not self.described:
            self.described = True
            first = min(parts, key=lambda part: part[1][0])[0]
            self.to_worker(first.worker, Msg.DESCRIBE, first.iid)
        per_worker: dict[int, list[list[Any]]] = {}
        owed: dict[int, list[tuple[RemoteInstance, int]]] = {}
        for inst, r in parts:
            per_worker.setdefault(inst.worker, []).append([inst.iid, r.astype(np.uint32).tobytes()])
            owed.setdefault(inst.worker, []).append((inst, len(r)))
        seq, index = self.seq, self.epoch_index
        discard = self.count(parts, rows, ended)
        messages = {worker: encode(Msg.FILL, slot, wire) for worker, wire in per_worker.items()}
        self.filling[slot] = _Filling(seq, self.epoch, index, rows, set(per_worker), discard, messages, owed)
        if self.segment is not None:
            for worker, message in messages.items():
                self.send_worker(worker, message)

    def skip_to(self, target: int) -> None:
        """Walk the policy over the batches a resumed trainer already had; workers drop those samples.

        Mux decisions, reweightings and epoch ends happen exactly as in the first run;
        only no slot is filled. An epoch whose last batch is the last one skipped is
        announced as ended (the trainer ignores it if it had seen that end).
        """
        while self.seq < target and self.next_epoch():
            parts, rows, ended = self.plan()
            if rows:
                per_worker: dict[int, dict[int, int]] = {}
                for inst, r in parts:
                    counts = per_worker.setdefault(inst.worker, {})
                    counts[inst.iid] = counts.get(inst.iid, 0) + len(r)
                    inst.filled += len(r)
                for worker, counts in per_worker.items():
                    self.to_worker(worker, Msg.SKIP, [[iid, n] for iid, n in counts.items()])
                self.count(parts, rows, ended)
                self.next_ready = self.seq
            if ended:
                self.end_epoch()

    def next_epoch(self) -> bool:
        """Whether an epoch is running, starting the next one if one is wanted."""
        if self.driver is None and self.epoch_wanted and not self.failed:
            self.epoch_wanted = False
            self.start_epoch()
        return self.driver is not None

    def on_filled(self, slot: int, worker: int, objects: dict[int, list[Any]]) -> None:
        filling = self.filling[slot]
        if worker not in filling.waiting:
            return
        filling.waiting.discard(worker)
        for inst, count in filling.parts.pop(worker):
            inst.filled += count
        filling.objects.update(objects)
        if filling.waiting:
            return
        del self.filling[slot]
        self.done[filling.seq] = (slot, filling)
        while self.next_ready in self.done:
            slot, f = self.done.pop(self.next_ready)
            self.next_ready += 1
            if f.discard:
                self.free.append(slot)
            else:
                objects = [f.objects[r] for r in range(f.rows)] if f.objects else []
                self.to_trainer(Msg.READY, slot, f.seq, f.epoch, f.index, f.rows, objects)
            if self.next_ready in self.epoch_ends:
                self.to_trainer(Msg.END, *self.epoch_ends.pop(self.next_ready))

    def run(self) -> None:
        while len(self.hello) < self.config.num_workers:
            self.pump(POLL_MS)
        self.skip_to(self.config.resume_seq)
        while True:
            while self.next_epoch() and not self.failed:
                if self.planned is None:
                    self.planned = self.plan()
                parts, rows, ended = self.planned
                if rows and not self.free:
                    break
                self.planned = None
                if rows:
                    self.assign(self.free.popleft(), parts, rows, ended)
                if ended:
                    self.end_epoch()
            self.pump(POLL_MS)


def mux_main(config: MuxConfig) -> None:
    """Entry point of the mux process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    proc = MuxProcess(config, ctx)
    try:
        proc.run()
    except _Stop:
        pass
    except Exception as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        with contextlib.suppress(zmq.ZMQError, _Stop):
            proc.to_trainer(Msg.ERROR, "internal", f"mux process: {type(exc).__name__}: {exc}", None, -1, tb, None)
        raise
    finally:
        proc.stopping = True
        for w in proc.hello:
            with contextlib.suppress(zmq.ZMQError):
                proc.to_worker(w, Msg.STOP)
        if os.getppid() != config.parent_pid and proc.segment is not None:
            _shm.unlink(proc.segment[0])
        proc.workers.close(0)
        proc.trainer.close(0)
        ctx.term()

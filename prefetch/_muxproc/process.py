"""The mux process: plans batches with the mux policy and moves only small messages.

It joins four parts with narrow interfaces: the worker links (socket, hellos,
generations), the instance table (stream instances in workers), the planner (which
instance fills each row) and the slot table (which slot holds which batch). One
loop drives them::

    wait for every worker's HELLO ─> resume (restore the planner's state, or replay)
    loop: plan batches into free slots (never blocking on one stream; a long round flushes as it goes)
          flush: queued FILLs and CLOSEs to workers, READY and END to the trainer
          handle every message that arrived (wait up to POLL_MS if nothing was planned)

Handlers only update the tables; planning happens only in the loop, so no handler
runs in the middle of a plan (nested muxes, whose in-process driver waits for
samples row by row, are the one exception: see `wait`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import signal
import traceback
from dataclasses import dataclass
from typing import Any

import zmq

from .. import _shm
from .._errors import PrefetchError
from .._messages import (
    FROM_TRAINER,
    TO_TRAINER,
    Avail,
    Describe,
    Failure,
    Filled,
    Free,
    Hello,
    Message,
    NextEpoch,
    Reset,
    SchemaFound,
    Segment,
    Skip,
    Skipped,
    State,
    Stats,
    Stop,
    Weights,
)
from .._policy import jsonable
from .._process import POLL_MS, die_with_parent, parent_alive, send_while_parent_lives
from .._streamer import Streamer
from .instances import InstanceTable
from .links import FlushPacer, WorkerLinks
from .planner import Leaves, Plan, Planner
from .slots import Filling, SlotTable


class _Stop(Exception):
    """Unwinds the loop when the trainer asked the mux process to stop, or is gone."""


@dataclass
class MuxConfig:
    """What the mux process needs to start; picklable for the spawn start method."""

    source: Streamer
    leaves: Leaves
    num_workers: int
    batch_size: int
    slots: int
    last_batch: str
    worker_endpoint: str
    trainer_endpoint: str
    parent_pid: int
    seed: int
    segment: Segment | None
    resume: dict[str, Any] | None
    rank: int = 0


class MuxProcess:
    def __init__(self, config: MuxConfig, ctx: zmq.Context) -> None:
        self.config = config
        self.links = WorkerLinks(ctx, config.worker_endpoint)
        self.trainer = ctx.socket(zmq.PAIR)
        for option, value in ((zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0), (zmq.SNDTIMEO, POLL_MS)):
            self.trainer.setsockopt(option, value)
        self.trainer.bind(config.trainer_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.links.sock, zmq.POLLIN)
        self.poller.register(self.trainer, zmq.POLLIN)
        slot_rows = config.slots * config.batch_size
        self.instances = InstanceTable(self.links.send, config.num_workers, config.seed, config.rank, slot_rows)
        self.instances.wait = self.wait
        weights = [] if config.resume is None else config.resume.get("weights", [])
        self.planner = Planner(config.source, config.leaves, self.instances, config.batch_size, config.last_batch,
                               slot_rows, weights)
        self.slots = SlotTable(config.slots)
        self.segments: list[Segment] = [] if config.segment is None else [config.segment]
        """The arena's segments in slot order: the first, then those the trainer added to keep more batches."""
        self.described = config.segment is not None
        self.describing: tuple[int, Describe] | None = None
        """The worker asked for the first sample's schema, and the question, until the segment exists."""
        self.planned: Plan | None = None
        self.snapshots: dict[int, dict[str, Any] | None] = {}
        self.failed = False
        self.stopping = False
        self.skipped = 0
        self.busy: dict[int, float] = {}
        self.pacer = FlushPacer()

    # --- messages ---------------------------------------------------------------------------------

    def to_trainer(self, message: Message) -> None:
        """Send to the trainer; a send that cannot complete (the trainer is gone) stops the mux process."""
        if not send_while_parent_lives(self.trainer, TO_TRAINER.encode(message), self.config.parent_pid):
            self.stopping = True
            raise _Stop

    def pump(self, timeout_ms: int) -> None:
        """Handle every message that arrives within the timeout; check the trainer lives."""
        events = dict(self.poller.poll(timeout_ms))
        if not events and not parent_alive(self.config.parent_pid):
            self.stopping = True
        if self.links.sock in events:
            for worker, message in self.links.receive():
                self.on_worker(worker, message)
        if self.trainer in events:
            while self.trainer.poll(0):
                self.on_trainer(FROM_TRAINER.decode(self.trainer.recv()))
        if self.stopping:
            raise _Stop

    def flush(self) -> None:
        """Send what the tables queued: FILLs and CLOSEs once the segment exists, READY and END always."""
        started = self.pacer.clock()
        for worker, iids in self.instances.take_closed().items():
            self.links.close_instances(worker, iids)
        self.links.flush(bool(self.segments))
        for message in self.slots.outbox:
            self.to_trainer(message)
        self.slots.outbox.clear()
        self.pacer.flushed(started)

    def wait(self, ready: Any) -> None:
        """Serve messages until `ready()` holds: how nested muxes' row-by-row driver waits for samples."""
        while not ready():
            self.flush()
            self.pump(POLL_MS)

    def on_worker(self, worker: int, message: Any) -> None:
        if isinstance(message, Avail):
            self.instances.on_avail(message.reports)
        elif isinstance(message, Filled):
            self.busy[worker] = message.busy
            for slot, objects in message.slots:
                self.slots.filled(slot, worker, objects)
        elif isinstance(message, Hello):
            if self.links.hello(message.worker, message.generation):
                self.resync(message.worker, message.generation)
        elif isinstance(message, SchemaFound):
            self.to_trainer(message)
        elif isinstance(message, Skipped):
            self.skipped += message.count
        elif isinstance(message, Failure):
            self.failed = True
            self.to_trainer(message)

    def on_trainer(self, message: Any) -> None:
        if isinstance(message, Free):
            self.slots.release(message.slots)
        elif isinstance(message, Segment):
            if message.first:
                self.slots.add(message.first, message.slots)
            elif message.slots > self.slots.size:
                self.size_arena(message.slots)
            self.segments.append(message)
            for worker in sorted(self.links.up):
                self.links.send(worker, message)
        elif isinstance(message, NextEpoch):
            self.planner.epoch_wanted = True
        elif isinstance(message, Weights):
            self.planner.add_weights(message.at, message.weights)
        elif isinstance(message, Stats):
            self.to_trainer(Stats(self.stats()))
        elif isinstance(message, State):
            self.to_trainer(State(message.seq, jsonable(self.snapshots.get(message.seq))))
        elif isinstance(message, Stop):
            self.stopping = True

    def size_arena(self, slots: int) -> None:
        """The first segment holds more slots than the mux process started with (the pool sized them by the
        batch's bytes): plan into them all, and keep as many samples ready ahead as if they had been there."""
        self.slots.add(self.slots.size, slots - self.slots.size)
        rows = slots * self.config.batch_size
        self.instances.slot_rows = rows
        self.planner.lookahead.rows_ahead = rows

    def resync(self, worker: int, generation: int) -> None:
        """A worker process (first or restarted) is up: bring it to the state the mux expects of it.

        RESET first (the worker ignores whatever reached it before), the segments, every
        instance it hosts reopened past the samples already written (the rest come out
        identical), the schema question if it died before answering, and every FILL it
        owes, in order.
        """
        self.links.send(worker, Reset(generation))
        for segment in self.segments:
            self.links.send(worker, segment)
        for inst in self.instances.hosted_by(worker):
            inst.requested = inst.filled
            self.links.send(worker, dataclasses.replace(inst.open, skip=inst.filled, window=inst.window))
        if not self.segments and self.describing is not None and self.describing[0] == worker:
            self.links.send(*self.describing)  # its answer died with the worker
        for slot, parts in self.slots.owed_by(worker):
            self.links.fill(worker, slot, parts)

    def stats(self) -> dict[str, Any]:
        lookahead = self.planner.lookahead
        return {
            "samples": dict(self.planner.samples),
            "skipped": self.skipped,
            "worker_busy_seconds": {str(w): s for w, s in sorted(self.busy.items())},
            "waiting_on": sorted(self.slots.waiting_on() | self.instances.waiting),
            **self.slots.counts(),
            "epoch": self.planner.epoch,
            "activations_foreseen": lookahead.hits,
            "activations_foreseen_in_vain": lookahead.misses,
        }

    # --- planning ---------------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Keep the planner's state at this batch boundary while a trainer may still ask for it."""
        snapshots = self.snapshots
        snapshots[self.planner.seq] = self.planner.snapshot()
        while snapshots and (oldest := next(iter(snapshots))) < self.slots.floor:  # in seq order: drop the front
            del snapshots[oldest]

    def plan_round(self) -> bool:
        """Plan batches into free slots until none is free, an epoch waits to be wanted, or samples are awaited.

        What it planned goes out as it goes once planning takes long (see FlushPacer).
        """
        progressed = False
        self.instances.waiting.clear()
        while not self.failed and (self.planned is not None or self.planner.running()):
            if self.planned is None:
                self.planned = self.planner.next_batch()
                if self.planned is None:
                    break
                self.snapshot()
            plan = self.planned
            if plan.rows and not self.slots.free:
                break
            self.planned = None
            if plan.rows:
                self.assign(plan)
                if self.pacer.due():
                    self.flush()
            if plan.ended:
                self.slots.end_epoch(plan.seq + (1 if plan.rows else 0), plan.epoch, plan.epoch_batches)
            progressed = True
        return progressed

    def assign(self, plan: Plan) -> None:
        """Put a planned batch into a free slot and queue each worker's rows of it."""
        if not self.described:
            self.described = True
            first = min(plan.parts, key=lambda part: part[1][0])[0]
            self.describing = (first.worker, Describe(first.iid))
            self.links.send(*self.describing)
        parts, owed = plan.by_worker()
        slot = self.slots.assign(Filling(plan.seq, plan.epoch, plan.index, plan.rows, plan.discard, parts, owed))
        for worker, wire in parts.items():
            self.links.fill(worker, slot, wire)

    def resume(self) -> None:
        """Continue where a resumed trainer stands: restore the planner's state, or replay for nested muxes."""
        state = self.config.resume
        if state is not None and state.get("mux") is not None:
            self.planner.restore(state["mux"])
            self.slots.skipped(self.planner.seq)
        elif state is not None:
            self.replay(state["consumed"])
        self.snapshot()

    def replay(self, target: int) -> None:
        """Walk the policy over the batches a resumed trainer already had; workers drop those samples.

        Mux decisions, reweightings and epoch ends happen exactly as in the first run;
        only no slot is filled. An epoch whose last batch is the last one skipped is
        announced as ended (the trainer ignores it if it had seen that end).
        """
        while self.planner.seq < target and self.planner.running():
            plan = self.planner.next_batch()
            if plan is None:
                self.flush()
                self.pump(POLL_MS)
                continue
            counts: dict[int, dict[int, int]] = {}
            for inst, rows in plan.parts:
                per_worker = counts.setdefault(inst.worker, {})
                per_worker[inst.iid] = per_worker.get(inst.iid, 0) + len(rows)
                inst.filled += len(rows)
            for worker, per_iid in counts.items():
                self.links.send(worker, Skip([[iid, n] for iid, n in per_iid.items()]))
            self.slots.skipped(self.planner.seq)
            if plan.ended:
                self.slots.end_epoch(self.planner.seq, plan.epoch, plan.epoch_batches)

    def run(self) -> None:
        while len(self.links.up) < self.config.num_workers:
            self.pump(POLL_MS)
        self.resume()
        while True:
            progressed = self.plan_round()
            self.flush()
            self.pump(0 if progressed else POLL_MS)


def mux_main(config: MuxConfig) -> None:
    """Entry point of the mux process (no parent-death signal: it must live to unlink the segments)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(config.parent_pid, by_signal=False)
    ctx = zmq.Context()
    proc = MuxProcess(config, ctx)
    try:
        proc.run()
    except _Stop:
        pass
    except Exception as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        ours = isinstance(exc, PrefetchError)
        with contextlib.suppress(zmq.ZMQError, _Stop):
            proc.to_trainer(Failure("schema" if ours else "internal", f"mux process: {type(exc).__name__}: {exc}",
                                    None, -1, tb, pickle.dumps(exc) if ours else None))
        if not ours:
            raise
    finally:
        proc.stopping = True
        for worker in proc.links.up:
            proc.links.send(worker, Stop())
        with contextlib.suppress(zmq.ZMQError):
            proc.links.flush(False)
        if not parent_alive(config.parent_pid):
            for segment in proc.segments:
                _shm.unlink(segment.name)
        proc.links.close()
        proc.trainer.close(0)
        ctx.term()

"""The worker links: the mux process's socket to the workers, their hellos and generations.

A worker's life as the mux sees it::

    (not yet up) ──HELLO g──> up (RESET g sent, then its state) ──process dies──> down
         ^                                                                          │
         └──────────────── the trainer restarts it with generation g + 1 ───────────┘

A send to a worker that is down is dropped: the restarted worker's HELLO brings a
resync (RESET, the segment, its instances reopened, the FILLs it owes) that makes
up for it. Messages are queued and go out at `flush`, one multipart message per
worker: first what was sent, in order, then one FILL with every queued slot, then
the CLOSEs (after the FILLs that still read those instances). FILL and CLOSE wait
for the shared-memory segment, which the first batch's schema creates. Bundling
matters on busy machines, where each ZeroMQ send costs a wake-up of its IO thread.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import zmq

from .._messages import FROM_WORKER, TO_WORKER, Close, Fill, Message

FLUSH_INTERVAL = 0.0005
"""Longest stretch of planning, in seconds, before the batches planned so far go out to the workers."""

FLUSH_SHARE = 0.2
"""Most of the mux process's time that mid-round flushes may take."""


class FlushPacer:
    """When a round of planning sends what it planned so far, instead of only at its end.

    A round plans every free slot before it flushes: in a trace of a three-stream mux,
    a round of 15 batches after a burst of frees took 3.4 ms while the workers, done
    with their last FILLs, waited. Flushing every FLUSH_INTERVAL lets them start on the
    first batches; and since each flush costs a send per worker (many with many
    workers), the pause between two flushes is at least 1/FLUSH_SHARE times as long
    as the last flush took.
    """

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self.clock = clock
        self.last = 0.0
        self.cost = 0.0

    def due(self) -> bool:
        """Whether the batches planned since the last flush should go out now."""
        return self.clock() - self.last >= max(FLUSH_INTERVAL, self.cost / FLUSH_SHARE)

    def flushed(self, started: float) -> None:
        """A flush that began at `started` (from `clock`) just ended."""
        self.last = self.clock()
        self.cost = self.last - started


class WorkerLinks:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(endpoint)
        self.generation: dict[int, int] = {}
        self.up: set[int] = set()
        self.down: set[int] = set()
        self.queued: defaultdict[int, list[bytes]] = defaultdict(list)
        self.fills: defaultdict[int, list[list[Any]]] = defaultdict(list)
        self.closes: defaultdict[int, list[int]] = defaultdict(list)

    def send(self, worker: int, message: Message) -> None:
        """Queue a message for the worker (one that is down loses it: its resync makes up for it)."""
        if worker not in self.down:
            self.queued[worker].append(TO_WORKER.encode(message))

    def fill(self, worker: int, slot: int, parts: list[list[Any]]) -> None:
        """Queue a slot's rows for the worker: every queued one goes in one FILL at the next flush."""
        self.fills[worker].append([slot, parts])

    def close_instances(self, worker: int, iids: list[int]) -> None:
        """Queue instances to close, after the worker's FILLs."""
        self.closes[worker] += iids

    def flush(self, segment_ready: bool) -> None:
        """Send each worker what was queued for it, in one multipart message; FILLs and CLOSEs once the segment is."""
        for worker in set(self.queued) | (set(self.fills) | set(self.closes) if segment_ready else set()):
            frames = self.queued.pop(worker, [])
            if segment_ready:
                fills, closes = self.fills.pop(worker, None), self.closes.pop(worker, None)
                if fills:
                    frames.append(TO_WORKER.encode(Fill(fills)))
                if closes:
                    frames.append(TO_WORKER.encode(Close(closes)))
            if frames and worker not in self.down:
                try:
                    self.sock.send_multipart([b"w%d" % worker, *frames])
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    self.down.add(worker)

    def receive(self) -> list[tuple[int, Any]]:
        """Every message waiting now, as (worker, message), in the order sent."""
        got = []
        while self.sock.poll(0):
            ident, *frames = self.sock.recv_multipart()
            worker = int(ident[1:])
            got += [(worker, FROM_WORKER.decode(frame)) for frame in frames]
        return got

    def hello(self, worker: int, generation: int) -> bool:
        """A worker process says it is up; True if it is a new generation that needs its state sent."""
        if generation <= self.generation.get(worker, -1):
            return False
        self.generation[worker] = generation
        self.down.discard(worker)
        self.up.add(worker)
        for queue in (self.queued, self.fills, self.closes):
            queue.pop(worker, None)
        return True

    def close(self) -> None:
        self.sock.close(0)

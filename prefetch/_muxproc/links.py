"""The worker links: the mux process's socket to the workers, their hellos and generations.

A worker's life as the mux sees it::

    (not yet up) ──HELLO g──> up (RESET g sent, then its state) ──process dies──> down
         ^                                                                          │
         └──────────────── the trainer restarts it with generation g + 1 ───────────┘

A send to a worker that is down is dropped: the restarted worker's HELLO brings a
resync (RESET, the segment, its instances reopened, the FILLs it owes) that makes
up for it. Messages to one worker are sent in the order they are given; FILL and
CLOSE wait for the shared-memory segment, which the first batch's schema creates.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import zmq

from .._messages import FROM_WORKER, TO_WORKER, Fill, Message


class WorkerLinks:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind(endpoint)
        self.generation: dict[int, int] = {}
        self.up: set[int] = set()
        self.down: set[int] = set()
        self.fills: defaultdict[int, list[list[Any]]] = defaultdict(list)

    def send(self, worker: int, message: Message) -> None:
        """Send now (a worker that is down loses it: its resync makes up for it)."""
        if worker in self.down:
            return
        try:
            self.sock.send_multipart([b"w%d" % worker, TO_WORKER.encode(message)])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.down.add(worker)

    def fill(self, worker: int, slot: int, parts: list[list[Any]]) -> None:
        """Queue a slot's rows for the worker: every queued one goes in one FILL at the next flush."""
        self.fills[worker].append([slot, parts])

    def flush_fills(self) -> None:
        for worker, fills in self.fills.items():
            if fills:
                self.send(worker, Fill(list(fills)))
                fills.clear()

    def receive(self) -> list[tuple[int, Any]]:
        """Every message waiting now, as (worker, message)."""
        got = []
        while self.sock.poll(0):
            ident, payload = self.sock.recv_multipart()
            got.append((int(ident[1:]), FROM_WORKER.decode(payload)))
        return got

    def hello(self, worker: int, generation: int) -> bool:
        """A worker process says it is up; True if it is a new generation that needs its state sent."""
        if generation <= self.generation.get(worker, -1):
            return False
        self.generation[worker] = generation
        self.down.discard(worker)
        self.up.add(worker)
        self.fills.pop(worker, None)
        return True

    def close(self) -> None:
        self.sock.close(0)

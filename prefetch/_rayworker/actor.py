"""Inside a Ray actor: one pool worker, unchanged, behind a relay in the trainer's process.

The worker speaks the usual protocol, over TCP to its relay (CurveZMQ: encrypted,
and only a peer given the pool's key through Ray can connect). Where its rows go
depends on where Ray placed it:

- on the trainer's node it maps the trainer's shared-memory slots and writes rows
  in place, as a local worker does: no copy;
- on another node it writes rows into this process's memory, laid out as the
  slots are, and the relay takes each filled slot's rows through Ray's object
  store (`take`) before it tells the mux they are written.

Ray imports this module in the actor's process; it imports nothing of Ray itself.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import threading
from typing import Any

import numpy as np
import zmq

from .._messages import Segment
from .._worker import WorkerConfig, _Writer, serve


def rows_index(rows: np.ndarray) -> slice | np.ndarray:
    """A slice for rows that run consecutively (a view, no gather), else the rows themselves.

    A FILL's rows are ascending and distinct, so first and last tell whether they run on.
    """
    if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


class WorkerActor:
    """A Ray actor running one worker: `serve` for the worker's life, `take` (concurrently) for rows."""

    def __init__(self) -> None:
        self.writer: _Writer | None = None
        self.started = threading.Event()

    def place(self) -> tuple[str, int]:
        """(Ray node id, pid) of this actor: the relay decides from the node whether rows can be written in place."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def serve(self, config: WorkerConfig, server_key: bytes, in_place: bool) -> None:
        """Run the worker until the relay passes on STOP; its parent check watches this actor's raylet."""
        config = dataclasses.replace(config, parent_pid=os.getppid(), die_by_signal=False)

        def secure(sock: zmq.Socket) -> None:
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            sock.curve_serverkey = server_key

        def started(writer: _Writer) -> None:
            self.writer = writer
            self.started.set()

        serve(config, None if in_place else own_memory, secure, started)

    def take(self, fills: list[list[Any]]) -> list[list[np.ndarray | None]]:
        """The rows written into each slot, [[slot, rows as uint32 bytes], ...]: per slot, one array per field."""
        self.started.wait()
        taken = []
        for slot, rows in fills:
            where = rows_index(np.frombuffer(rows, np.uint32))
            taken.append([None if array is None else array[where] for array in self.writer.slot_arrays[slot]])
        return taken


def own_memory(segment: Segment) -> mmap.mmap:
    """Private memory for a segment's slots (a worker on another node than the trainer's writes here)."""
    return mmap.mmap(-1, max(1, segment.slot_bytes * segment.slots))

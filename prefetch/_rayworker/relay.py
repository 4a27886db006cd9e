"""Beside the trainer: the relay that stands in for one worker actor, as a local worker process would.

To the mux process the relay is the worker: it connects with the worker's identity
and passes every message on, both ways, in order. It binds a TCP port (CurveZMQ,
keyed per relay) for the actor's worker, and it is where the trainer's slots meet
rows made on other nodes: it notes which rows each FILL asks of the worker, and on
each FILLED it takes those rows from the actor (through Ray's object store), writes
them into the trainer's slots, and only then passes FILLED on. An actor on the
trainer's node writes the slots itself, and FILLED passes straight through.

Its life, which the pool sees as a process's (`exitcode`, `join`, `kill`)::

    placing the actor ──placed──> relaying ──the actor's worker ends (STOP)──> exitcode 0
                                     └──the actor dies, or a take fails──> exitcode 1, `cause` (restarted)

The actor ends with its relay; a trainer that dies takes its actors with it (Ray
kills the actors of a driver that exits).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from collections import defaultdict, deque
from concurrent.futures import Future
from typing import Any

import numpy as np
import zmq

from .. import _shm
from .._messages import FROM_WORKER, TO_WORKER, Fill, Filled, Reset, Segment
from .._process import POLL_MS
from .._schema import Schema
from .._worker import RECONNECT_MS, WorkerConfig
from .actor import rows_index


@dataclasses.dataclass
class Placement:
    """What a relay needs to know of the trainer: its Ray node, its address and the mux's endpoint."""

    node: str
    host: str
    mux_endpoint: str


class RayWorker:
    """The trainer's handle on one worker actor and its relay thread; the pool treats it as a worker process."""

    def __init__(self, actor_class: Any, actor_options: dict[str, Any], config: WorkerConfig,
                 placement: Placement) -> None:
        self.exitcode: int | None = None
        self.cause: str | None = None
        """Why the actor ended, as Ray tells it (None: it was stopped)."""
        self.pid: int | None = None
        """The actor's process id on its node, once placed."""
        self.actor = actor_class.options(**actor_options).remote()
        self.config, self.placement = config, placement
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"prefetch-relay-{config.worker_id}", daemon=True)
        self.thread.start()

    # --- what the pool asks of a worker process ---------------------------------------------------

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def kill(self) -> None:
        self.stopping.set()
        self.thread.join(2 * POLL_MS / 1000)
        self._kill_actor()

    def close(self) -> None:
        """Nothing to release once ended: the relay's thread closed its sockets and killed the actor."""

    # --- the relay thread ---------------------------------------------------------------------------

    def _kill_actor(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)

    def _run(self) -> None:
        import ray

        ctx = zmq.Context()
        link: _Link | None = None
        died = False
        try:
            link = _Link(ctx, self.config, self.placement)
            node, self.pid = ray.get(self.actor.place.remote())
            config = dataclasses.replace(self.config, endpoint=link.endpoint)
            in_place = node == self.placement.node
            served = link.watch(self.actor.serve.remote(config, link.server_key, in_place))
            died = link.relay(self.actor, in_place, served, self.stopping)
        except Exception as exc:  # Ray's account of the actor's death, or a failure of the relay itself
            died, self.cause = True, f"{type(exc).__name__}: {exc}"
        finally:
            if link is not None:
                link.close()
                if died and self.cause is None:
                    self.cause = link.cause
            ctx.destroy(linger=0)  # closes any socket a failed start left open
            self._kill_actor()
            self.exitcode = 1 if died else 0


class _Link:
    """The relay's sockets and the rows in flight: the mux side, the actor side, and futures of Ray calls."""

    def __init__(self, ctx: zmq.Context, config: WorkerConfig, placement: Placement) -> None:
        self.mux = ctx.socket(zmq.DEALER)
        self.mux.setsockopt(zmq.IDENTITY, b"w%d" % config.worker_id)
        self.peer = ctx.socket(zmq.DEALER)
        for sock in (self.mux, self.peer):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        self.mux.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        self.mux.connect(placement.mux_endpoint)
        self.server_key, secret = zmq.curve_keypair()
        self.peer.curve_server = True
        self.peer.curve_secretkey = secret
        self.peer.bind(f"tcp://{placement.host}:0")
        self.endpoint = self.peer.getsockopt_string(zmq.LAST_ENDPOINT)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_w.setblocking(False)
        self.owed: defaultdict[int, deque[np.ndarray]] = defaultdict(deque)
        """Per slot, the rows of each FILL this worker was sent and has not reported, oldest first."""
        self.slots: list[list[np.ndarray | None]] = []
        """The trainer's slots, as per-field arrays (mapped from the segments passing by)."""
        self.mappings: list[Any] = []
        self.cause: str | None = None
        self.generation = config.generation
        self.synced = False

    def watch(self, ref: Any) -> Future:
        """The future of a Ray call, which wakes the relay when it completes."""
        future = ref.future()
        future.add_done_callback(self._wake)
        return future

    def _wake(self, _: Future) -> None:
        with contextlib.suppress(OSError):
            self.wake_w.send(b"\0")

    def relay(self, actor: Any, in_place: bool, served: Future, stopping: threading.Event) -> bool:
        """Pass messages both ways until the worker ends; True if the actor died (or a take failed)."""
        poller = zmq.Poller()
        for sock in (self.mux, self.peer, self.wake_r):
            poller.register(sock, zmq.POLLIN)
        pending: deque[tuple[list[bytes], Future | None, list[list[Any]]]] = deque()
        while not stopping.is_set():
            events = dict(poller.poll(POLL_MS))
            if self.wake_r.fileno() in events:
                with contextlib.suppress(BlockingIOError):
                    self.wake_r.recv(4096, socket.MSG_DONTWAIT)
            while self.mux.poll(0):
                frames = self.mux.recv_multipart()
                for frame in frames:
                    self.note(TO_WORKER.decode(frame), in_place)
                with contextlib.suppress(zmq.Again):  # the actor is gone: its restart resyncs
                    self.peer.send_multipart(frames, zmq.NOBLOCK)
            while self.peer.poll(0):
                frames = self.peer.recv_multipart()
                if in_place:
                    pending.append((frames, None, []))
                    continue
                for frame in frames:
                    message = FROM_WORKER.decode(frame)
                    if not isinstance(message, Filled):
                        pending.append(([frame], None, []))
                        continue
                    for slot, objects in message.slots:  # a take per slot: transfers overlap, none waits for all
                        fills = [[slot, self.owed[slot].popleft().tobytes()]]
                        frame = FROM_WORKER.encode(Filled([[slot, objects]], message.busy))
                        pending.append(([frame], self.watch(actor.take.remote(fills)), fills))
            while pending and (pending[0][1] is None or pending[0][1].done()):
                frames, taken, fills = pending.popleft()
                if taken is not None:
                    try:
                        self.write(fills, taken.result())
                    except Exception as exc:
                        self.cause = f"taking rows from the actor failed: {type(exc).__name__}: {exc}"
                        return True
                self.mux.send_multipart(frames)
            if served.done():
                exc = served.exception()
                if exc is not None:
                    self.cause = f"{type(exc).__name__}: {exc}"
                return exc is not None
        return False

    def note(self, message: Any, in_place: bool) -> None:
        """Keep what the relay needs of a message to the worker: segments to map, rows to take.

        Like the worker, it ignores what comes before the RESET of its generation: the
        mux may still send a dead generation's FILLs to the worker's identity, which this
        relay took over, and their rows are not this worker's to report.
        """
        if in_place:
            return
        if not self.synced:
            self.synced = isinstance(message, Reset) and message.generation == self.generation
            return
        if isinstance(message, Segment):
            schema = Schema.from_wire(message.schema)
            if message.first == 0:
                self.slots = []
            mapping = _shm.attach(message.name)
            self.mappings.append(mapping)
            self.slots += [schema.views(mapping, s * message.slot_bytes, message.offsets, message.batch_size)
                           for s in range(message.slots)]
        elif isinstance(message, Fill):
            for slot, parts in message.fills:
                rows = [np.frombuffer(rows, np.uint32) for _, rows in parts]
                self.owed[slot].append(np.sort(np.concatenate(rows)) if len(rows) > 1 else rows[0])

    def write(self, fills: list[list[Any]], taken: list[list[np.ndarray | None]]) -> None:
        """Copy rows taken from the actor into the trainer's slots."""
        for (slot, rows), arrays in zip(fills, taken, strict=True):
            where = rows_index(np.frombuffer(rows, np.uint32))
            for view, array in zip(self.slots[slot], arrays, strict=True):
                if view is not None:
                    view[where] = array

    def close(self) -> None:
        self.slots = []
        for mapping in self.mappings:
            with contextlib.suppress(BufferError):
                mapping.close()
        self.mux.close(0)
        self.peer.close(0)
        self.wake_r.close()
        self.wake_w.close()

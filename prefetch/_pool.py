"""Pool: the trainer's side of the engine. Starts the processes, owns shared memory, yields batches."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import math
import multiprocessing
import os
import pickle
import secrets
import shutil
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from . import _shm
from ._batch import Batch, SlotReleases
from ._errors import (
    ArgumentError,
    PoolClosedError,
    PoolStartError,
    PoolTimeoutError,
    PrefetchError,
    SlotsExhaustedError,
    WorkerDiedError,
    WorkerError,
    add_note,
    check_int,
)
from ._messages import (
    FROM_TRAINER,
    TO_TRAINER,
    End,
    Failure,
    Free,
    Message,
    NextEpoch,
    Ready,
    SchemaFound,
    Segment,
    State,
    Stats,
    Stop,
    Weights,
)
from ._mux import BaseMux, check_weights
from ._muxproc import Leaves, MuxConfig, mux_main
from ._process import derive_seed
from ._schema import Schema
from ._sizes import parse_size
from ._streamer import Streamer
from ._walk import BLOCK
from ._worker import RECONNECT_MS, WorkerConfig, worker_main

POLL_MS = 100
"""Longest wait for a message before the trainer checks that every process lives."""

STATS_MS = 500
"""How long a timeout report waits for the mux process to say which workers it waits on."""

CHECK_SECONDS = 0.2
"""How often the trainer checks that every process lives, even while batches flow."""

STOP_SEND_MS = 500
"""How long close() may wait for its STOP to reach the mux process (its socket may still be connecting)."""

JOIN_SECONDS = 2.0
"""How long close() waits for processes to exit by themselves before killing them."""

WORKER_GRACE_SECONDS = 0.5
"""How long workers may take to exit once the mux process has (a worker that started late misses its STOP)."""


@dataclass(frozen=True)
class PoolOptions:
    """A pool's settings, validated once.

    Attributes:
        batch_size: rows per batch.
        workers: worker processes.
        prefetch: shared-memory slots to start with, i.e. batches in flight or held by the trainer (without
            `prefetch=`: default_prefetch until the first batch's schema is known, then auto_prefetch).
        shm_limit: bytes the slots may grow to when the trainer keeps batches (None: half of /dev/shm).
        seed: root of every seed in the pool (mux policies, stream activations, replicas).
        last_batch: "partial" (a shorter last batch), "drop", or "pad" (full size; `batch.size` rows valid).
        on_error: "raise" (WorkerError in the trainer) or "skip" (drop the sample, count it in stats()).
        timeout: seconds to wait for one batch before PoolTimeoutError; None waits for ever.
        max_restarts: worker deaths the pool recovers from (restarting the worker) before it gives up.
        start_method: multiprocessing start method of the processes.
        rank: this training process's rank (torchrun's RANK), 0 .. world_size - 1.
        world_size: training processes, each with its own pool (torchrun's WORLD_SIZE).
    """

    batch_size: int
    workers: int
    prefetch: int
    seed: int
    last_batch: str
    on_error: str
    timeout: float | None
    max_restarts: int
    start_method: str
    rank: int = 0
    world_size: int = 1
    shm_limit: int | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("batch_size", 1), ("workers", 1), ("prefetch", 1), ("max_restarts", 0), ("rank", 0),
                              ("world_size", 1)):
            check_int(getattr(self, name), minimum, f"Pool: {name}")
        if self.batch_size >= 2**32:
            raise ArgumentError(f"Pool: batch_size must be below 2**32, got {self.batch_size}")
        if self.rank >= self.world_size:
            raise ArgumentError(f"Pool: rank={self.rank} must be below world_size={self.world_size}")
        limit = process_limit()
        if limit is not None and self.workers + 1 > limit:
            raise ArgumentError(f"Pool: workers={self.workers} needs {self.workers + 1} processes, but this user may "
                                f"run at most {limit} (RLIMIT_NPROC); lower workers=")
        if self.last_batch not in ("partial", "drop", "pad"):
            raise ArgumentError(f"Pool: last_batch must be 'partial', 'drop' or 'pad', got {self.last_batch!r}")
        if self.on_error not in ("raise", "skip"):
            raise ArgumentError(f"Pool: on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ArgumentError(f"Pool: timeout must be None or a number > 0, got {self.timeout!r}")
        if self.start_method not in multiprocessing.get_all_start_methods():
            raise ArgumentError(f"Pool: start_method must be one of {multiprocessing.get_all_start_methods()}, "
                                f"got {self.start_method!r}")


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """rank and world_size as given, else from torchrun's RANK and WORLD_SIZE, else 0 and 1."""
    def env(name: str, value: int | None, default: int) -> int:
        if value is not None:
            return value
        text = os.environ.get(name)
        if text is None:
            return default
        try:
            return int(text)
        except ValueError:
            raise ArgumentError(f"Pool: the environment variable {name}={text!r} is not an integer") from None

    return env("RANK", rank, 0), env("WORLD_SIZE", world_size, 1)


STATE_FORMAT = 2
"""Version of Pool.state_dict's layout; a state of another version is refused."""


def check_state(state: Any, options: PoolOptions, order_depends_on_workers: bool, seed_given: bool) -> None:
    """Reject a state dict this pool cannot resume exactly, saying why."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ArgumentError(f"Pool: state must be a dict from Pool.state_dict() (format {STATE_FORMAT}), got "
                            f"{state if not isinstance(state, dict) else 'format ' + repr(state.get('format'))}")
    for name in ("batch_size", "rank", "world_size"):
        if state[name] != getattr(options, name):
            raise ArgumentError(f"Pool: the state was saved with {name}={state[name]}, this pool has "
                                f"{name}={getattr(options, name)}; resuming would not continue the same batches")
    if seed_given and state["seed"] != options.seed:
        raise ArgumentError(f"Pool: the state was saved with seed={state['seed']}, this pool was given "
                            f"seed={options.seed}; leave seed out to take the state's")
    if order_depends_on_workers and state["workers"] != options.workers:
        raise ArgumentError(
            f"Pool: the state was saved with workers={state['workers']}, this pool has workers={options.workers}, "
            "and a replicated stream's order depends on the worker count, so it cannot resume exactly; use "
            f"workers={state['workers']}")


def process_limit() -> int | None:
    """The most processes this user may run, where the system sets a limit."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    return None if soft == resource.RLIM_INFINITY else soft


AUTO_SLOTS_BYTES = 128 * 2**20
"""Most bytes the slots take when `prefetch` is not given (before the trainer keeps batches)."""

AUTO_SLOTS_MAX = 256
"""Most slots a pool starts with when `prefetch` is not given."""


def default_prefetch(workers: int) -> int:
    """The fewest slots a pool starts with: enough batches in flight that workers rarely wait on the trainer."""
    return max(8, 4 * workers)


def auto_prefetch(workers: int, slot_bytes: int, room: int) -> int:
    """Slots when `prefetch` is not given, once a slot's size is known: as many as AUTO_SLOTS_BYTES hold (within
    half of `room`, the bytes the slots may take now; the rest is left for kept batches), up to AUTO_SLOTS_MAX,
    and never fewer than default_prefetch.

    Small batches are bound by latency, not by work: each slot goes round from the
    trainer to the mux process, a worker, and back, a trip of about 10 ms on a busy
    2-core machine, so 16 slots cap a pool at some 1,600 batches a second whatever its
    workers do. On that machine `small` (batches of 133 kB) ran at 0.45M samples/s with
    16 slots, 0.66M with 128 and 0.74M with 256 (no more with 512), `mux` at 0.36M, 0.49M
    and 0.53M (0.56M with 512): bigger bundles per message, less CPU per batch.
    `image` (64 images of 224x224x3, 9.6 MB a batch) gains up to 64 slots (34k samples/s
    with 8, 44k with 64: 614 MB), more memory than the default takes (13 slots).
    """
    fit = min(AUTO_SLOTS_BYTES, room // 2) // max(1, slot_bytes)
    return max(default_prefetch(workers), min(AUTO_SLOTS_MAX, fit))


def default_start_method() -> str:
    """fork on Linux (starts in milliseconds), else spawn; forkserver where forking this process is unsafe.

    Forking copies a process's memory but only the forking thread: JAX's runtime
    threads, or an initialised CUDA context, are left broken in the child (CUDA
    refuses to work there; JAX warns of deadlocks), and a Ray driver's gRPC
    connections stop answering the parent (seen as `ray.nodes()` hanging). So once
    JAX is imported, CUDA is initialised or Ray is connected in the trainer, the
    pool's processes start from a clean forkserver process.
    """
    if sys.platform != "linux":
        return "spawn"
    torch = sys.modules.get("torch")
    cuda = torch is not None and hasattr(torch, "cuda") and torch.cuda.is_initialized()
    ray = sys.modules.get("ray")
    connected = ray is not None and hasattr(ray, "is_initialized") and ray.is_initialized()
    return "forkserver" if cuda or connected or "jax" in sys.modules else "fork"


@dataclass
class _Tree:
    source: Streamer
    leaves: Leaves


def _prepare(source: Streamer, seed: int) -> _Tree:
    """Copy the mux tree, seed its unseeded muxes from the pool seed, and list its leaves."""
    leaves: list[Streamer] = []
    seen: dict[int, int] = {}

    def rebuild(node: Streamer, path: tuple[int, ...]) -> Streamer:
        if isinstance(node, BaseMux):
            twin = copy.copy(node)
            if node.random_state is None:
                twin.random_state = derive_seed(seed, 2**31, *path)
            if isinstance(node.streamers, list):
                twin.streamers = [rebuild(child, (*path, i)) for i, child in enumerate(node.streamers)]
            return twin
        if id(node) not in seen:
            seen[id(node)] = len(leaves)
            leaves.append(node)
        return node

    tree = rebuild(source, ())
    names = [repr(leaf) for leaf in leaves]
    labels = [name if names.count(name) == 1 else f"{name}#{i}" for i, name in enumerate(names)]
    return _Tree(tree, Leaves(leaves, labels))


def _check_picklable(method: str, tree: _Tree, transform: Any) -> None:
    if method == "fork":
        return
    named = [(f"stream {label}", leaf) for label, leaf in zip(tree.leaves.labels, tree.leaves.streams, strict=True)]
    named.append(("the source", tree.source))
    if transform is not None:
        named.append((f"transform {transform!r}", transform))
    main_importable = hasattr(sys.modules.get("__main__"), "__file__")
    for what, obj in named:
        try:
            pickled = pickle.dumps(obj)
        except Exception as exc:
            raise ArgumentError(
                f"Pool: {what} cannot be pickled, which the {method!r} start method needs to send it to the "
                f"worker processes ({type(exc).__name__}: {exc}). Define functions at module level, or use "
                "start_method='fork' on Linux."
            ) from exc
        if not main_importable and b"__main__" in pickled:
            raise ArgumentError(
                f"Pool: {what} refers to code defined in an interactive session or `python -c`, which processes "
                f"started with {method!r} cannot import. Define it in a module or a script file"
                + (", or use start_method='fork' (forking is unsafe here: JAX is imported or CUDA initialised)."
                   if sys.platform == "linux" else "."))


class _Resources:
    """Everything a pool must release, kept apart from the Pool so a finalizer can release it."""

    def __init__(self) -> None:
        self.processes: list[tuple[str, Any]] = []
        self.ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None
        self.segments: list[_shm.Segment] = []
        self.watchers: list[tuple[Callable[[Any], None], Callable[[Any], None]]] = []
        """(added, removing) callbacks of adapters that must know every slot mapping (to page-lock it)."""
        self.ipc_dir: str | None = None

    def shutdown(self) -> None:
        if self.sock is not None:
            self.sock.setsockopt(zmq.SNDTIMEO, STOP_SEND_MS)
            with contextlib.suppress(zmq.ZMQError):
                self.sock.send(FROM_TRAINER.encode(Stop()))
        deadline = time.monotonic() + JOIN_SECONDS
        for i, (_, proc) in enumerate(self.processes):
            proc.join(max(0.0, deadline - time.monotonic()))
            if i == 0:
                deadline = min(deadline, time.monotonic() + WORKER_GRACE_SECONDS)
        for _, proc in self.processes:
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        for _, proc in self.processes:
            with contextlib.suppress(ValueError):
                proc.close()
        self.processes = []
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        for segment in self.segments:
            for _, removing in self.watchers:
                removing(segment.mapping)
            segment.unlink()
        self.segments = []
        self.watchers = []
        if self.ipc_dir is not None:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)
            self.ipc_dir = None


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a Pool method under the pool's lock: ZeroMQ sockets must not be used by two threads at once."""
    @functools.wraps(method)
    def locked(self: Pool, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class Pool:
    """Prefetch batches from a stream or mux with worker processes and shared memory.

    The top-level mux policy runs in a mux process, the leaf streams run in worker
    processes (each activation of a stream in one worker, activations spread over the
    workers in turn; a `replicated()` stream in every worker), and each sample is
    written once, by a worker, into a row of a shared-memory slot. Iterating the pool
    yields `Batch` objects whose arrays are views over those slots. Close it (or use
    it as a context manager) to stop the processes and unlink the shared memory; exit
    and garbage collection close it too.
    """

    def __init__(self, source: Any, *, batch_size: int, workers: int | None = None, prefetch: int | None = None,
                 seed: int | None = None, transform: Callable[[Any], Any] | None = None, schema: Any = None,
                 last_batch: str = "partial", on_error: str = "raise", timeout: float | None = None,
                 max_restarts: int = 3, state: dict[str, Any] | None = None, rank: int | None = None,
                 world_size: int | None = None, start_method: str | None = None,
                 shm_limit: int | str | None = None) -> None:
        self._res = _Resources()
        self._closed = True
        self._owner = os.getpid()
        self._lock = threading.RLock()
        """Serializes the trainer's use of the socket: two threads may iterate one pool, each batch goes to one."""
        self._init = (source, {"batch_size": batch_size, "workers": workers, "prefetch": prefetch, "seed": seed,
                               "transform": transform, "schema": schema, "last_batch": last_batch,
                               "on_error": on_error, "timeout": timeout, "max_restarts": max_restarts,
                               "rank": rank, "world_size": world_size, "start_method": start_method,
                               "shm_limit": shm_limit})
        if not isinstance(source, Streamer):
            raise ArgumentError(f"Pool: source must be a prefetch.Streamer or a mux, got {type(source).__name__}")
        if seed is not None:
            check_int(seed, 0, "Pool: seed")
        if transform is not None and not callable(transform):
            raise ArgumentError(f"Pool: transform must be callable, got {transform!r}")
        n_workers = check_int(workers, 1, "Pool: workers") if workers is not None else (os.cpu_count() or 1)
        rank, world_size = resolve_rank(rank, world_size)
        if seed is None and isinstance(state, dict) and isinstance(state.get("seed"), int):
            seed_value = state["seed"]
        else:
            seed_value = secrets.randbits(63) if seed is None else seed
        options = PoolOptions(
            batch_size=batch_size, workers=n_workers,
            prefetch=prefetch if prefetch is not None else default_prefetch(n_workers),
            seed=seed_value, last_batch=last_batch, on_error=on_error, timeout=timeout, max_restarts=max_restarts,
            start_method=start_method or default_start_method(), rank=rank, world_size=world_size,
            shm_limit=parse_size(shm_limit, "Pool: shm_limit"),
        )
        self.options = options
        self._auto_prefetch = prefetch is None
        """Whether the slots are sized by the first segment's bytes (auto_prefetch) once the schema is known."""
        self._schema = Schema.coerce(schema) if schema is not None else None
        tree = _prepare(source, options.seed)
        self._order_depends_on_workers = any(leaf.replicas and not leaf.order_free for leaf in tree.leaves.streams)
        if state is not None:
            check_state(state, options, self._order_depends_on_workers, seed is not None)
        self._resume = state
        _check_picklable(options.start_method, tree, transform)
        self._source = tree.source
        _shm.sweep()
        self._start(tree, transform)
        self._closed = False
        self._finalizer = weakref.finalize(self, self._res.shutdown)
        _LIVE.add(self)

    # --- start-up ---------------------------------------------------------------------------------

    def _start(self, tree: _Tree, transform: Any) -> None:
        opts, res = self.options, self._res
        res.ipc_dir = tempfile.mkdtemp(prefix="prefetch-")
        worker_endpoint = f"ipc://{res.ipc_dir}/w"
        trainer_endpoint = f"ipc://{res.ipc_dir}/t"
        self._layout: tuple[list[int], int] | None = None
        self._slots = opts.prefetch
        """Slots in the arena now: `prefetch` at first, more while the trainer keeps batches (up to shm_limit)."""
        self._places: list[tuple[Any, int]] = []
        """Each slot's mapping and byte offset in it."""
        segment = self._create_segment(self._schema) if self._schema is not None else None
        opts = self.options  # with the slots sized, if the segment could be made now
        self._mp = multiprocessing.get_context(opts.start_method)
        me = os.getpid()
        resume = self._resume or {}
        mux = MuxConfig(tree.source, tree.leaves, opts.workers, opts.batch_size, opts.prefetch, opts.last_batch,
                        worker_endpoint, trainer_endpoint, me, opts.seed, segment, self._resume, opts.rank)
        self._worker_config = WorkerConfig(0, opts.workers, worker_endpoint, tree.leaves.streams, transform,
                                           opts.on_error, me, rank=opts.rank, world_size=opts.world_size)
        try:
            res.processes.append(("mux process", self._launch(mux_main, mux, "prefetch-mux")))
            for w in range(opts.workers):
                res.processes.append((f"worker {w}", self._launch_worker(w, 0)))
        except Exception:
            res.shutdown()
            raise
        res.ctx = zmq.Context()
        res.sock = res.ctx.socket(zmq.PAIR)
        res.sock.setsockopt(zmq.LINGER, 0)
        res.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        res.sock.connect(trainer_endpoint)
        self._restarts = 0
        self._generations = [0] * opts.workers
        self._next_check = 0.0
        self._releases = SlotReleases()
        self._inbox: deque[Message] = deque()
        self._held = 0
        self._last_seq = resume.get("consumed", 0) - 1
        self._last_epoch = resume.get("epoch", -1)
        self._last_index = resume.get("index", 0) - 1
        self._ended_through = resume.get("epoch", -1) - (0 if resume.get("epoch_ended") else 1)
        self._weights_history: list[list[Any]] = [list(w) for w in resume.get("weights", [])]
        self._delivered = 0
        self._epoch_batches: int | None = None
        self._wait = 0.0
        self._first_next: float | None = None
        self._started = time.perf_counter()

    def _launch(self, target: Callable[[Any], None], config: Any, name: str) -> Any:
        with warnings.catch_warnings():
            # Python >= 3.12 warns on fork whenever native threads exist (numpy's BLAS pool, zmq's IO thread);
            # children never use what those threads hold, and fork is the method asked for.
            warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
            proc = self._mp.Process(target=target, args=(config,), name=name, daemon=True)
            try:
                proc.start()
            except OSError as exc:
                raise PoolStartError(f"Pool: could not start {name} ({exc}); lower workers= or free resources") \
                    from exc
        return proc

    def _launch_worker(self, worker: int, generation: int) -> Any:
        config = dataclasses.replace(self._worker_config, worker_id=worker, generation=generation,
                                     die_by_signal=threading.current_thread() is threading.main_thread())
        return self._launch(worker_main, config, f"prefetch-worker-{worker}")

    def _create_segment(self, schema: Schema) -> Segment:
        """The arena's first segment, once the schema is known; without `prefetch` it sizes the slots first.

        The mux process started with `default_prefetch` slots; a first segment with
        more tells it how many the arena holds (see MuxProcess.on_trainer).
        """
        opts = self.options
        offsets, slot_bytes = schema.layout(opts.batch_size)
        self._schema = schema
        self._layout = (offsets, slot_bytes)
        if self._auto_prefetch:
            room, shm = self._shm_limit(), _shm.usage()
            count = auto_prefetch(opts.workers, slot_bytes, room if shm is None else min(room, shm[0]))
            self.options = dataclasses.replace(opts, prefetch=count)
            self._slots = count
        return self._add_segment(0, self.options.prefetch)

    def _add_segment(self, first: int, count: int) -> Segment:
        """Create a segment for slots first .. first + count - 1; the message that announces it."""
        opts = self.options
        offsets, slot_bytes = self._layout
        segment = _shm.Segment(_shm.new_name(), slot_bytes * count,
                               f"the pool's {count} {'more ' if first else ''}slots of {opts.batch_size} rows "
                               f"({slot_bytes / 1e6:,.1f} MB each)")
        self._res.segments.append(segment)
        self._places += [(segment.mapping, i * slot_bytes) for i in range(count)]
        for added, _ in self._res.watchers:
            added(segment.mapping)
        return Segment(segment.name, self._schema.to_wire(), offsets, slot_bytes, count, opts.batch_size, first)

    def _watch_segments(self, added: Callable[[Any], None], removing: Callable[[Any], None]) -> None:
        """Call `added` with every slot mapping, now and as the arena grows, and `removing` before one goes.

        For adapters that page-lock the slots for fast copies to a GPU (prefetch.torch).
        """
        self._res.watchers.append((added, removing))
        for segment in self._res.segments:
            added(segment.mapping)

    def _shm_limit(self) -> int:
        """Bytes the slots may take: shm_limit, else half of /dev/shm (never less than the first slots)."""
        first = self._layout[1] * self.options.prefetch
        if self.options.shm_limit is not None:
            return max(first, self.options.shm_limit)
        room = _shm.usage()
        return max(first, room[1] // 2 if room else 8 * first)

    def _grow(self) -> None:
        """The trainer holds every slot: double them (within shm_limit) or raise SlotsExhaustedError."""
        slot_bytes = self._layout[1]
        limit = self._shm_limit()
        count = min(self._slots, limit // slot_bytes - self._slots)
        if count < 1:
            raise SlotsExhaustedError(
                f"the trainer holds all {self._slots} shared-memory slots ({self._slots * slot_bytes / 1e6:,.0f} MB; "
                f"shm_limit is {limit / 1e6:,.0f} MB), so no batch can be filled; copy the arrays you keep "
                "(np.array(batch['x'])), call batch.release(), or raise Pool(shm_limit=...)")
        self._send(self._add_segment(self._slots, count))
        self._slots += count

    # --- messages ---------------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self._res.sock.send(FROM_TRAINER.encode(message))

    def _flush_frees(self) -> None:
        slots = self._releases.take()
        if slots:
            self._held -= len(slots)
            self._send(Free(slots))

    def _receive(self) -> Message:
        """The next Ready (of one batch), End, Stats or State, raising for errors, dead processes and timeouts."""
        self._check_usable()
        if self._inbox:
            return self._inbox.popleft()
        sock = self._res.sock
        deadline = None if self.options.timeout is None else time.monotonic() + self.options.timeout
        while True:
            self._flush_frees()
            if self._held >= self._slots:
                gc.collect()
                self._flush_frees()
                if self._held >= self._slots:
                    self._grow()
            if time.monotonic() >= self._next_check:
                self._check_processes()
            if self._closed:  # another thread closed the pool while this one waited
                raise PoolClosedError("the pool was closed while waiting for a batch")
            if sock.poll(POLL_MS):
                message = TO_TRAINER.decode(sock.recv())
                if isinstance(message, SchemaFound):
                    self._send(self._create_segment(Schema.from_wire(message.schema)))
                    continue
                if isinstance(message, Failure):
                    self._fail(message)
                if isinstance(message, Ready) and len(message.batches) > 1:
                    self._inbox.extend(Ready([batch]) for batch in message.batches[1:])
                    return Ready(message.batches[:1])
                return message
            self._check_processes()
            if deadline is not None and time.monotonic() > deadline:
                waiting = self._waiting_on()
                self.close()
                raise PoolTimeoutError(f"no batch arrived within timeout={self.options.timeout} s; {waiting}")

    def _ask(self, question: Stats | State) -> Any:
        """Send a question to the mux process and return its answer; batches arriving meanwhile stay queued."""
        self._send(question)
        passed: list[Message] = []
        while True:
            message = self._receive()
            if isinstance(message, State) and isinstance(question, State) and message.seq == question.seq:
                break
            if isinstance(message, Stats) and isinstance(question, Stats) and message.counters is not None:
                break
            passed.append(message)
        self._inbox.extendleft(reversed(passed))
        return message

    def _waiting_on(self) -> str:
        """Which workers the unfinished batches wait on, asked of the mux process (briefly)."""
        sock = self._res.sock
        self._send(Stats(None))
        deadline = time.monotonic() + STATS_MS / 1000
        while sock.poll(max(0, int(1000 * (deadline - time.monotonic())))):
            message = TO_TRAINER.decode(sock.recv())
            if isinstance(message, Stats):
                workers = message.counters["waiting_on"]
                return f"batches are waiting on worker(s) {workers}" if workers else "no batch is being filled"
            self._inbox.append(message)
        return "the mux process does not answer"

    def _check_processes(self) -> None:
        """Restart a dead worker while restarts remain; raise for the mux process or past the limit."""
        self._next_check = time.monotonic() + CHECK_SECONDS
        for i, (name, proc) in enumerate(self._res.processes):
            code = proc.exitcode
            if code is None:
                continue
            if i == 0 or self._restarts >= self.options.max_restarts:
                self.close()
                error = WorkerDiedError(name, code)
                if getattr(proc, "cause", None):
                    add_note(error, proc.cause)
                if i:
                    add_note(error, f"the pool had restarted workers {self._restarts} times (max_restarts="
                                    f"{self.options.max_restarts})")
                raise error
            self._restarts += 1
            worker = i - 1
            self._generations[worker] += 1
            proc.close()
            self._res.processes[i] = (name, self._launch_worker(worker, self._generations[worker]))

    def _fail(self, failure: Failure) -> None:
        """Close the pool and raise: the worker's own PrefetchError for bad data, else WorkerError."""
        self.close()
        original = None
        if failure.pickled is not None:
            with contextlib.suppress(Exception):
                original = pickle.loads(failure.pickled)
        if failure.kind == "schema" and isinstance(original, PrefetchError):
            where = "the mux process" if failure.worker < 0 else f"worker {failure.worker}"
            add_note(original, f"found by {where}")
            raise original
        raise WorkerError(failure.message, failure.stream, failure.worker, failure.traceback, original) from original

    # --- iteration --------------------------------------------------------------------------------

    @_serialized
    def __iter__(self) -> Iterator[Batch]:
        """Batches of the current epoch; if the last epoch ended, of the next one.

        Leaving the loop early and iterating again continues where you left off. An
        error such as SlotsExhaustedError leaves the iterator usable once you act on it.
        """
        self._check_usable()
        if self._epoch_batches == 0:
            self._send(NextEpoch())
        self._epoch_batches = None
        return _Epoch(self)

    @_serialized
    def _next_batch(self, epoch: int) -> Batch | None:
        """The next batch of `epoch`, or None at its end (which another thread's iterator may have seen first)."""
        if self._ended_through >= epoch:
            return None
        start = time.perf_counter()
        if self._first_next is None:
            self._first_next = start
        message = self._receive()
        stale = (Stats, State)
        while isinstance(message, stale) or (isinstance(message, End) and message.epoch <= self._ended_through):
            message = self._receive()
        self._wait += time.perf_counter() - start
        if isinstance(message, End):
            self._epoch_batches = message.batches
            self._ended_through = message.epoch
            return None
        return self._batch(*message.batches[0])

    def _batch(self, slot: int, seq: int, epoch: int, index: int, rows: int, objects: list[list[Any]]) -> Batch:
        offsets, slot_bytes = self._layout
        mapping, offset = self._places[slot]
        holder, release = self._releases.views(mapping, offset, slot_bytes, slot)
        self._held += 1
        self._last_seq, self._last_epoch, self._last_index = seq, epoch, index
        self._delivered += 1
        pad = self.options.last_batch == "pad"
        length = self.options.batch_size if pad else rows
        fields: dict[Any, Any] = {}
        object_index = 0
        views = self._schema.views(holder, 0, offsets, self.options.batch_size)
        for f, array in zip(self._schema.fields, views, strict=True):
            if array is not None:
                if pad and rows < length:
                    array[rows:] = 0
                fields[f.key] = array[:length]
            else:
                fields[f.key] = [row[object_index] for row in objects] + [None] * (length - rows)
                object_index += 1
        return Batch(fields, rows, index, epoch, release, seq)

    # --- control ----------------------------------------------------------------------------------

    @_serialized
    def set_weights(self, weights: Any) -> int:
        """Reweight the top-level mux; returns how many more batches come with the old weights.

        The change starts at an exact batch, the same from run to run: as many batches
        ahead of the trainer as there are slots, plus the one the mux process may have
        planned and hold for a free slot, plus a block of choices (the ones that may
        already be planned keep the old weights, and none drawn before the new ones
        arrive may reach a block into the reweighted batches, or the rows before them
        would depend on when they arrived; a longer draw is cut where they start).
        """
        source = self._source
        if not isinstance(getattr(source, "weights", None), np.ndarray) or not isinstance(source, BaseMux):
            raise ArgumentError(f"Pool.set_weights: the source {source!r} is not a weighted mux")
        w = check_weights(weights, source.n_streams, "Pool.set_weights")
        self._check_usable()
        # the mux process may have planned a batch into every slot (before the first segment sized the slots
        # by their bytes: into as many as it may get)
        slots = AUTO_SLOTS_MAX if self._auto_prefetch and self._layout is None else self._slots
        ahead = slots + 1 + math.ceil(BLOCK / self.options.batch_size)
        at = self._last_seq + 1 + ahead
        self._send(Weights(at, w.tolist()))
        self._weights_history.append([at, w.tolist()])
        return ahead

    @_serialized
    def state_dict(self) -> dict[str, Any]:
        """Where the trainer stands: batches handed out count as consumed, prefetched ones do not.

        Plain ints, floats, strings and lists, for JSON or msgpack. `Pool(..., state=sd)`
        (or `load_state_dict(sd)` before iterating) continues with exactly the batches an
        uninterrupted run would have given next. It holds the mux policy's state at that
        batch and the position of each live stream activation, so a resume reopens only
        those (jumping with `seek` where a stream has it). A state taken from a closed
        pool, or of nested muxes, lacks it: resuming from it replays the consumed batches.
        """
        return self._state(self._last_seq + 1, self._last_epoch, self._last_index + 1,
                           self._ended_through >= self._last_epoch)

    @_serialized
    def _state_through(self, batch: Batch, epoch_ended: bool) -> dict[str, Any]:
        """The state after `batch`, for an adapter that took later batches ahead of its user (a GPU copy)."""
        return self._state(batch.seq + 1, batch.epoch, batch.index + 1, epoch_ended)

    def _state(self, consumed: int, epoch: int, index: int, epoch_ended: bool) -> dict[str, Any]:
        mux = None if self._closed else self._ask(State(consumed, None)).state
        return {
            "format": STATE_FORMAT,
            "seed": self.options.seed,
            "batch_size": self.options.batch_size,
            "workers": self.options.workers,
            "rank": self.options.rank,
            "world_size": self.options.world_size,
            "consumed": consumed,
            "epoch": epoch,
            "index": index,
            "epoch_ended": epoch_ended,
            "weights": [list(w) for w in self._weights_history],
            "mux": mux,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state` (see state_dict); only before the first batch is taken."""
        if self._delivered or self._first_next is not None:
            raise ArgumentError("Pool.load_state_dict: the pool has started delivering batches; load a state "
                                "before iterating, or pass state= to Pool")
        source, kwargs = self._init
        self.close()
        self.__init__(source, **{**kwargs, "state": state})

    @_serialized
    def stats(self) -> dict[str, Any]:
        """Counters: samples per stream, batches, worker busy and trainer wait fractions, slots by state."""
        self._check_usable()
        mux = self._ask(Stats(None)).counters
        elapsed = time.perf_counter() - self._started
        iterating = time.perf_counter() - self._first_next if self._first_next is not None else 0.0
        return {
            "batches": self._delivered,
            "samples": mux["samples"],
            "skipped": mux["skipped"],
            "worker_busy_fraction": {int(w): s / elapsed for w, s in mux["worker_busy_seconds"].items()},
            "trainer_wait_fraction": self._wait / iterating if iterating > 0 else 0.0,
            "slots": {
                "free": mux["slots_free"],
                "filling": mux["slots_filling"],
                "ready": max(0, self._slots - mux["slots_free"] - mux["slots_filling"] - self._held),
                "held": self._held,
                "total": self._slots,
            },
            "epoch": mux["epoch"],
            "restarts": self._restarts,
            "seed": self.options.seed,
            "activations_foreseen": mux["activations_foreseen"],
            "activations_foreseen_in_vain": mux["activations_foreseen_in_vain"],
        }

    def close(self) -> None:
        """Stop every process and unlink the shared memory; safe to call twice, and from any thread.

        A thread waiting for a batch meanwhile gets PoolClosedError within POLL_MS. In
        a process forked from the trainer it does nothing: the pool is the parent's.
        """
        if os.getpid() != self._owner:
            return
        self._closed = True
        with self._lock:
            finalizer = getattr(self, "_finalizer", None)
            if finalizer is not None:
                finalizer()
            else:
                self._res.shutdown()

    def _check_usable(self) -> None:
        if os.getpid() != self._owner:
            raise PrefetchError(
                f"this pool belongs to process {self._owner}, and process {os.getpid()} was forked from it: its "
                "workers and shared memory answer only to their trainer. Create a new Pool in the child.")
        if self._closed:
            raise PoolClosedError("the pool is closed")

    def _forsake(self) -> None:
        """In a forked child: never stop the parent's processes at exit (as multiprocessing would), never use them."""
        self._finalizer.detach()
        children = multiprocessing.process._children  # multiprocessing terminates these at a child's exit
        for _, proc in self._res.processes:
            children.discard(proc)
        _FORSAKEN.append(self._res)  # never collected here: closing the parent's sockets is the parent's job
        self._res = _Resources()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Pool({self._source!r}, batch_size={self.options.batch_size}, workers={self.options.workers}, {state})"


_LIVE: weakref.WeakSet[Pool] = weakref.WeakSet()
_FORSAKEN: list[_Resources] = []


def _after_fork_in_child() -> None:
    for pool in list(_LIVE):
        pool._forsake()
    _LIVE.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Epoch:
    """The iterator over one epoch of a pool; exceptions do not end it (unlike a generator)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.epoch = pool._ended_through + 1
        self.ended = False

    def __iter__(self) -> _Epoch:
        return self

    def __next__(self) -> Batch:
        if self.ended:
            raise StopIteration
        batch = self.pool._next_batch(self.epoch)
        if batch is None:
            self.ended = True
            raise StopIteration
        return batch

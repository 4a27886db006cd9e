"""The planner: which instance's samples fill each row of the next batch, decided by the seeded mux policy.

Three row strategies, chosen once per epoch by the shape of the source:

- leaf: the source is one stream (or replicated stream); rows come in runs from its instance;
- flat: a mux of leaf streams; its `Walk` gives blocks of stream choices, turned into rows with numpy;
- nested: a mux of muxes; the in-process driver yields one row's instance at a time.

Leaf and flat planning never block: when a chosen instance has too few samples
ready, `next_batch` keeps what it planned so far and returns None, and the mux
process calls it again once workers report more. Nested planning pulls rows through
the in-process driver, which waits for samples (`InstanceTable.wait`).

An epoch::

    (none) ──wanted──> running ──last batch planned──> (none)   [next one wanted at once unless empty]

Reweighting cut-offs: a `set_weights` from the trainer applies from an exact batch;
no choice past its first row is drawn before it. The flat strategy also runs a
`Lookahead`, which opens the activations the policy is about to make, so that a
stream's start-up overlaps other streams' production.

State: at every batch boundary `snapshot()` says where the planner stands (walk,
live instances and their positions, activation counts), and `restore()` continues
from it: a resumed pool reopens only the live activations, each skipped to its
position (a jump for streams with `seek`).
"""

from __future__ import annotations

import copy
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ArgumentError
from .._mux import BaseMux, DriveControl
from .._policy import Activation
from .._streamer import Streamer
from .._walk import Walk
from .instances import Handle, InstanceTable, RemoteInstance

LOOKAHEAD_STEPS = 64
"""Most blocks the look-ahead walks per real block, so that it never holds the mux process up for long."""

LOOKAHEAD_MAX = 256
"""Most activations opened ahead of need."""


@dataclass
class Plan:
    """One planned batch: each instance's rows, as (instance, row numbers)."""

    parts: list[tuple[RemoteInstance, np.ndarray]]
    rows: int
    ended: bool
    seq: int
    epoch: int
    index: int
    discard: bool
    epoch_batches: int = 0
    """Batches the epoch has had so far, this one included (dropped ones not)."""


@dataclass
class Leaves:
    """The leaf streams of the source tree, as placed by the pool (indices are keys in OPEN)."""

    streams: list[Streamer]
    labels: list[str]


class Lookahead:
    """Opens the activations a StochasticMux with a finite rate will make next, before the planner reaches them.

    It keeps a slots' worth of rows and two activations per worker ahead, so that
    every worker has a start-up to overlap. A copy of the walk runs ahead of the real
    one, as if every stream delivered its
    whole budget: which stream, with which budget and seed, comes from the seeded
    policy alone. Its activations are opened at once, in the workers they will run in.
    The planner claims them in order; the first that differs (a finite stream ended
    early and changed the next choice, or a reweighting) drops them all, closing their
    instances (work wasted, never a different batch), and the copy restarts from the
    real walk.
    """

    def __init__(self, planner: Planner, rows_ahead: int, activations_ahead: int) -> None:
        self.planner, self.rows_ahead, self.activations_ahead = planner, rows_ahead, activations_ahead
        self.queue: deque[tuple[tuple[int, Any, int, int], Handle]] = deque()
        self.pending: Counter[int] = Counter()
        self.pending_placed = 0
        self.shadow: Walk | None = None
        self.lead = 0
        self.hits = self.misses = 0

    def reset(self) -> None:
        if self.queue:
            self.misses += len(self.queue)
        self.queue.clear()
        self.pending.clear()
        self.pending_placed = 0
        self.shadow = None

    def claim(self, ident: tuple[int, Any, int, int]) -> Handle | None:
        """The opened instance of the activation (key, budget, number, placement), if it was foreseen."""
        if self.queue and self.queue[0][0] == ident:
            (key, _, _, placement), handle = self.queue.popleft()
            self.pending[key] -= 1
            self.pending_placed -= placement >= 0
            self.hits += 1
            return handle
        self.reset()
        return None

    def top_up(self, walk: Walk, delivered: int) -> None:
        """After the real walk finished a block of `delivered` rows: walk the copy on and open what it foresees."""
        if not getattr(walk.policy, "predictable", False):
            return
        if self.shadow is None:
            self.shadow = copy.deepcopy(walk)
            self.shadow.saving = False
            self.lead = 0
        else:
            self.lead -= delivered
        for _ in range(LOOKAHEAD_STEPS):
            enough = self.lead >= self.rows_ahead and len(self.queue) >= self.activations_ahead
            if enough or len(self.queue) >= LOOKAHEAD_MAX:
                return
            choices = self.shadow.draw()
            if choices is None:
                return
            _, activations = self.shadow.finish(len(choices), None)
            self.lead += len(choices)
            for a in activations:
                self._open(a)

    def _open(self, a: Activation) -> None:
        planner, table = self.planner, self.planner.instances
        leaf = planner.source._child(a.child)
        key, index, pickled, label, replicated = planner.leaf_key(leaf)
        activation = table.activations[key] + self.pending[key]
        placement = -1 if replicated else table.placed + self.pending_placed
        handle = planner.open(key, index, pickled, label, a.budget, replicated, activation, placement)
        self.queue.append(((key, a.budget, activation, placement), handle))
        self.pending[key] += 1
        self.pending_placed += not replicated


class Planner:
    def __init__(self, source: Streamer, leaves: Leaves, instances: InstanceTable, batch_size: int,
                 last_batch: str, rows_ahead: int, weights_history: list[list[Any]]) -> None:
        self.source, self.leaves, self.instances = source, leaves, instances
        self.batch_size, self.last_batch = batch_size, last_batch
        self.leaf_index = {id(leaf): i for i, leaf in enumerate(leaves.streams)}
        self.nested = isinstance(source, BaseMux) and isinstance(source.streamers, list) and any(
            isinstance(c, BaseMux) for c in source.streamers)
        self.lookahead = Lookahead(self, rows_ahead, 2 * instances.num_workers)
        self.control = DriveControl(self.cap)
        self.pending_weights: dict[int, list[float]] = {int(at): w for at, w in weights_history}
        self.dynamic = 0
        self.seq = 0
        self.epoch = -1
        self.epoch_index = 0
        self.epoch_rows = 0
        self.epoch_wanted = True
        self.mode: str | None = None
        self.walk: Walk | None = None
        self.block_pos = 0
        self.live: dict[int, Handle] = {}
        self.leaf: Handle | None = None
        self.driver: Iterator[Any] | None = None
        self.parts: list[tuple[RemoteInstance, np.ndarray]] = []
        self.filled = 0
        self.samples: Counter[str] = Counter()

    # --- instances --------------------------------------------------------------------------------

    def leaf_key(self, leaf: Streamer) -> tuple[int, int, Any, str, bool]:
        """(key, leaf index or -1, pickled streamer or None, label, replicated) of a leaf to activate."""
        if isinstance(leaf, BaseMux):
            raise ArgumentError(f"Pool: {leaf!r} was yielded by a ChainMux's generator function; a pool runs "
                                "generated streams, but not generated muxes: list them in the ChainMux instead")
        index = self.leaf_index.get(id(leaf))
        if index is not None:
            return index, index, None, self.leaves.labels[index], leaf.replicas
        key = len(self.leaves.streams) + self.dynamic
        self.dynamic += 1
        return key, -1, leaf, repr(leaf), leaf.replicas

    def open(self, key: int, index: int, pickled: Any, label: str, budget: int | None, replicated: bool,
             activation: int, placement: int, skip: int | list[int] = 0, count: int = 0) -> Handle:
        workers = list(range(self.instances.num_workers)) if replicated else None
        return self.instances.open(key, index, pickled, label, budget, workers, activation, placement, skip,
                                   lambda: self.epoch_index, count)

    def activate(self, leaf: Streamer, budget: int | None) -> Handle:
        """Open an activation the policy made: the look-ahead's instance if it foresaw it, else a new one."""
        key, index, pickled, label, replicated = self.leaf_key(leaf)
        activation, placement = self.instances.confirm(key, replicated)
        placement = -1 if replicated else placement
        handle = self.lookahead.claim((key, budget, activation, placement))
        if handle is None:
            handle = self.open(key, index, pickled, label, budget, replicated, activation, placement)
        return handle

    def open_child(self, child: Streamer, budget: int | None) -> Iterator[Any]:
        """open_child for the in-process driver of nested muxes."""
        if isinstance(child, BaseMux):
            return child._drive(self.open_child, budget)
        return self.activate(child, budget)

    # --- epochs -----------------------------------------------------------------------------------

    def running(self) -> bool:
        """Whether an epoch is running, starting the next one if it is wanted."""
        if self.mode is None and self.epoch_wanted:
            self.epoch_wanted = False
            self._start_epoch()
        return self.mode is not None

    def _start_epoch(self) -> None:
        self.epoch += 1
        self.epoch_index = self.epoch_rows = 0
        source = self.source
        if not isinstance(source, BaseMux):
            self.mode, self.leaf = "leaf", self.activate(source, None)
        elif self.nested:
            self.mode, self.driver = "nested", source._drive(self.open_child, None, self.control)
        else:
            self.mode, self.walk, self.block_pos = "flat", source._walk(None, saving=True), 0
            self.control.policy = self.walk.policy
            self._launch(self.walk.start())
            self.lookahead.top_up(self.walk, 0)

    def _end_epoch(self) -> None:
        self.mode, self.walk, self.leaf, self.driver = None, None, None, None
        self.live.clear()
        self.lookahead.reset()
        self.epoch_wanted = self.epoch_rows > 0

    def cap(self, n: int) -> int:
        """Rows of choices the policy may draw now: none past the first row of a reweighted batch."""
        for at in sorted(self.pending_weights):
            if at < self.seq or (at == self.seq and self.filled == 0):
                self._apply_weights(self.pending_weights.pop(at))
                continue
            return max(1, min(n, (at - self.seq) * self.batch_size - self.filled))
        return n

    def _apply_weights(self, weights: list[float]) -> None:
        self.source.weights = np.asarray(weights, dtype=float)
        if self.control.policy is not None:
            self.control.policy.set_weights(self.source.weights)

    # --- batches ----------------------------------------------------------------------------------

    def next_batch(self) -> Plan | None:
        """The next batch of the running epoch; None while the rows wait for samples (call again later)."""
        n = self.batch_size
        if self.mode == "leaf":
            complete = self._rows_from_leaf(n)
        elif self.mode == "flat":
            complete = self._rows_from_walk(n)
        else:
            complete = self._rows_nested(n)
        if not complete:
            return None
        parts, rows = self.parts, self.filled
        self.parts, self.filled = [], 0
        ended = rows < n
        for inst, r in parts:
            self.samples[inst.label] += len(r)
        discard = ended and rows > 0 and self.last_batch == "drop"
        plan = Plan(parts, rows, ended, self.seq, self.epoch, self.epoch_index, discard)
        if rows:
            self.seq += 1
            self.epoch_index += 0 if discard else 1
            self.epoch_rows += rows
        plan.epoch_batches = self.epoch_index
        if ended:
            self._end_epoch()
        return plan

    def _add(self, runs: list[tuple[RemoteInstance, int]], rows: np.ndarray) -> None:
        first = 0
        for inst, k in runs:
            self.parts.append((inst, rows[first:first + k]))
            first += k

    def _rows_from_leaf(self, n: int) -> bool:
        """Runs of rows from the source's instance; False while waiting for it."""
        leaf = self.leaf
        while self.filled < n:
            k = leaf.available(n - self.filled)
            if k == 0:
                return leaf.drained()
            self._add(leaf.take(k), np.arange(self.filled, self.filled + k))
            self.filled += k
        return True

    def _rows_from_walk(self, n: int) -> bool:
        """Whole blocks of stream choices at a time, with numpy; False while a chosen instance has too few samples.

        The rows before the first one that cannot be served yet are kept, so planning
        resumes where it stopped.
        """
        walk = self.walk
        while self.filled < n:
            if walk.choices is None:
                if walk.draw(self.cap) is None:
                    return True
                self.block_pos = 0
            choices = walk.choices
            segment = choices[self.block_pos:self.block_pos + n - self.filled]
            needs = np.bincount(segment)
            cut, exhausted, waiting = len(segment), None, False
            for j in np.flatnonzero(needs).tolist():
                need, handle = int(needs[j]), self.live[j]
                have = handle.available(need)
                if have < need:
                    at = int(np.flatnonzero(segment == j)[have])
                    if at < cut:
                        cut = at
                        exhausted, waiting = (j, False) if handle.ended else (None, True)
            if cut:
                taken = segment[:cut]
                order = np.argsort(taken, kind="stable") + self.filled
                start = 0
                for j, count in enumerate(np.bincount(taken).tolist()):
                    if count:
                        self._add(self.live[j].take(count), order[start:start + count])
                        start += count
                self.filled += cut
                self.block_pos += cut
            if waiting:
                return False
            if exhausted is not None or self.block_pos == len(choices):
                self._finish_block(exhausted)
        return True

    def _finish_block(self, exhausted: int | None) -> None:
        delivered = self.block_pos
        ended, activations = self.walk.finish(delivered, exhausted)
        for slot in ended:
            self.live.pop(slot, None)
        self._launch(activations)
        self.lookahead.top_up(self.walk, delivered)

    def _launch(self, activations: list[Activation]) -> None:
        for a in activations:
            self.live[a.slot] = self.activate(self.source._child(a.child), a.budget)

    def _rows_nested(self, n: int) -> bool:
        """Rows one at a time from the in-process driver, grouped per instance."""
        rows: dict[RemoteInstance, list[int]] = {}
        while self.filled < n:
            try:
                inst = next(self.driver)
            except StopIteration:
                break
            rows.setdefault(inst, []).append(self.filled)
            self.filled += 1
        self.parts = [(inst, np.array(r)) for inst, r in rows.items()]
        return True

    # --- state ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        """Where the planner stands between two batches (JSON-safe); None for nested muxes, which resume by replay."""
        if self.nested:
            return None
        source = self.source
        state: dict[str, Any] = {
            "seq": self.seq, "epoch": self.epoch, "epoch_index": self.epoch_index, "epoch_rows": self.epoch_rows,
            "wanted": self.epoch_wanted, "dynamic": self.dynamic, "instances": self.instances.state(),
            "mux_activations": source.activations if isinstance(source, BaseMux) else None,
        }
        if self.mode == "flat":
            state["walk"] = self.walk.get_state()
            state["pos"] = self.block_pos
            state["live"] = [[slot, handle.state()] for slot, handle in sorted(self.live.items())]
        elif self.mode == "leaf":
            state["leaf"] = self.leaf.state()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot(): reopen the live activations, each past the samples consumed."""
        self.seq, self.epoch, self.epoch_index = state["seq"], state["epoch"], state["epoch_index"]
        self.epoch_rows, self.epoch_wanted, self.dynamic = state["epoch_rows"], state["wanted"], state["dynamic"]
        self.instances.set_state(state["instances"])
        source = self.source
        for at in sorted(at for at in self.pending_weights if at < self.seq):
            source.weights = np.asarray(self.pending_weights.pop(at), dtype=float)
        if "walk" in state:
            self.walk = source._walk(None, saving=True)
            self.walk.set_state(state["walk"])
            self.mode, self.block_pos = "flat", state["pos"]
            self.control.policy = self.walk.policy
            children = self.walk.policy.live()
            for slot, inst in state["live"]:
                self.live[slot] = self._reopen(source._child(children[slot]), inst)
        elif "leaf" in state:
            self.mode, self.leaf = "leaf", self._reopen(source, state["leaf"])
        if isinstance(source, BaseMux):
            source.activations = state["mux_activations"]

    def _reopen(self, leaf: Streamer, inst: list[Any]) -> Handle:
        """Open an instance again from its state() (see RemoteInstance.state, ReplicatedInstance.state)."""
        key, activation, budget, placement, skip, *count = inst
        index = self.leaf_index.get(id(leaf), -1)
        label = self.leaves.labels[index] if index >= 0 else repr(leaf)
        workers = self.instances.num_workers
        if isinstance(skip, list) and len(skip) != workers:
            # An order-free replicated stream resumed with another worker count: replica r reads batches r, r + R, ...
            done = count[0] // self.batch_size
            skip = [self.batch_size * len(range(r, done, workers)) for r in range(workers)]
        return self.open(key, index, leaf if index < 0 else None, label, budget, leaf.replicas, activation, placement,
                         skip, count[0] if count else 0)

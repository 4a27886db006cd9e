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
no choice past its first row is drawn before it (blocks the walk drew ahead are
dropped when new weights arrive). The flat strategy also runs a `Lookahead`, which
has the walk draw blocks ahead and opens the activations they foresee, so that a
stream's start-up overlaps other streams' production; the planner then replays
those blocks, a window of several at a time.

State: at every batch boundary `snapshot()` says where the planner stands (walk,
live instances and their positions, activation counts), and `restore()` continues
from it: a resumed pool reopens only the live activations, each skipped to its
position (a jump for streams with `seek`).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ArgumentError
from .._mux import BaseMux, DriveControl
from .._policy import Activation
from .._streamer import Streamer
from .._walk import SPAN, Walk
from .instances import Handle, InstanceTable, RemoteInstance, ReplicatedInstance

LOOKAHEAD_STEPS = 64
"""Most blocks the look-ahead walks per real block, so that it never holds the mux process up for long."""

LOOKAHEAD_MAX = 256
"""Most activations opened ahead of need."""

ROWS = np.dtype("<u4")
"""Row numbers in a plan, in every strategy: as a FILL carries them, so a part goes out without a conversion."""


@dataclass
class Plan:
    """One planned batch: each instance's rows, as (instance, row numbers of dtype ROWS: as a FILL carries them)."""

    parts: list[tuple[RemoteInstance, np.ndarray]]
    rows: int
    ended: bool
    seq: int
    epoch: int
    index: int
    discard: bool
    epoch_batches: int = 0
    """Batches the epoch has had so far, this one included (dropped ones not)."""

    def by_worker(self) -> tuple[dict[int, list[list[Any]]], dict[int, list[tuple[RemoteInstance, int]]]]:
        """Per worker, its parts as a FILL carries them ([iid, rows as uint32 bytes]), and (instance, rows) owed."""
        wire: dict[int, list[list[Any]]] = {}
        owed: dict[int, list[tuple[RemoteInstance, int]]] = {}
        for inst, rows in self.parts:
            wire.setdefault(inst.worker, []).append([inst.iid, rows.tobytes()])
            owed.setdefault(inst.worker, []).append((inst, len(rows)))
        return wire, owed


@dataclass
class Window:
    """A block in the planner's window: its choices, how many of its rows the window reads, and the instances
    the activations before it brought (slot, instance), as the look-ahead opened them."""

    choices: np.ndarray
    rows: int
    launched: list[tuple[int, Any]]
    ends: int | None = None
    """The slot whose stream runs out right after the window's rows of the block, as foreseen and confirmed
    (its instance ended with exactly the samples those rows take): the block ends there."""


@dataclass
class Leaves:
    """The leaf streams of the source tree, as placed by the pool (indices are keys in OPEN)."""

    streams: list[Streamer]
    labels: list[str]


class Lookahead:
    """Opens the activations a StochasticMux with a finite rate will make next, before the planner reaches them.

    It keeps a slots' worth of rows and two activations per worker ahead, so that
    every worker has a start-up to overlap. The walk draws blocks ahead as if every
    stream delivered its whole budget (`Walk.extend`): which stream, with which
    budget and seed, comes from the seeded policy alone. Each block's activations
    are opened at once, in the workers they will run in, and kept on the block.
    When the planner finishes a block as foreseen it claims them in order; a block
    that went otherwise (a finite stream ended early and changed the next choice)
    or a reweighting drops the blocks ahead, closing their instances (work wasted,
    never a different batch). A stream that ended before its budget is foreseen to
    end again where it did (its activations start it afresh), so the walk draws its
    blocks ahead up to that end as the planner will meet it; one whose ends move (a
    replicated stream, a stream of random length) stops the walk from drawing further
    ahead while it is active, and so, once some stream has ended early, does one not
    yet seen to end at all (by its budget or early). Without that, a mux of streams
    shorter than its rate opened and closed a slots' worth of activations at every end
    (30 streams of 20 samples, rate=64: 1.2k samples/s, against 17k without a
    look-ahead); a mux whose streams never end early is foreseen from the start.
    """

    def __init__(self, planner: Planner, rows_ahead: int, activations_ahead: int) -> None:
        self.planner, self.rows_ahead, self.activations_ahead = planner, rows_ahead, activations_ahead
        self.claimable: deque[tuple[tuple[int, Any, int, int], Handle]] = deque()
        self.pending: Counter[int] = Counter()
        self.pending_placed = 0
        self.opened = 0
        self.rewinds = 0
        self.hits = self.misses = 0
        self.lengths: dict[int, int] = {}
        """Leaf key -> samples its activations make when they end before their budget, as seen so far."""
        self.short: set[int] = set()
        """Leaf keys of the streams whose ends cannot be foreseen: no block is drawn ahead past them."""
        self.spent: set[int] = set()
        """Leaf keys of the streams seen to deliver a whole budget (they do not end early, as far as we know)."""
        self.child_keys: list[int | None] | None = None
        """The leaf key of each of the mux's children (made once: a mux with a rate lists its streams)."""

    def reset(self) -> None:
        """The walk is gone (the epoch ended): what it had opened ahead is wasted."""
        self.misses += self.opened
        self.claimable.clear()
        self.pending.clear()
        self.pending_placed = self.opened = self.rewinds = 0

    def _sync(self, walk: Walk) -> None:
        """Count again what is opened ahead, if the walk dropped blocks since last time."""
        if walk.rewinds == self.rewinds:
            return
        self.rewinds = walk.rewinds
        self.claimable.clear()
        before = self.opened
        self.pending.clear()
        self.pending_placed = self.opened = 0
        for block in walk.ahead:
            for (key, _, _, placement), _ in block.opened:
                self._count(key, placement, 1)
        self.misses += before - self.opened

    def _count(self, key: int, placement: int, n: int) -> None:
        self.pending[key] += n
        self.pending_placed += n * (placement >= 0)
        self.opened += n

    def finished(self, walk: Walk) -> None:
        """The planner finished a block: what was opened for its activations may now be claimed."""
        self._sync(walk)
        while self.claimable:
            self._drop(self.claimable.popleft())
        if walk.foreseen is not None:
            self.claimable.extend(walk.foreseen.opened)

    def _drop(self, entry: tuple[tuple[int, Any, int, int], Handle]) -> None:
        (key, _, _, placement), _ = entry
        self._count(key, placement, -1)

    def claim(self, ident: tuple[int, Any, int, int]) -> Handle | None:
        """The opened instance of the activation (key, budget, number, placement), if it was foreseen."""
        while self.claimable:
            entry = self.claimable.popleft()
            self._drop(entry)
            if entry[0] == ident:
                self.hits += 1
                return entry[1]
            self.misses += 1
        return None

    def top_up(self, walk: Walk) -> None:
        """After the real walk finished a block: draw blocks ahead and open the activations they foresee.

        Until the epoch's first batch is planned, only as far as that batch: start-ups
        opened further ahead would compete for the cores with those it needs.
        """
        if not getattr(walk.policy, "predictable", False) or self.planner.pending_weights:
            return
        self._sync(walk)
        first = self.planner.epoch_index == 0
        rows_ahead = min(self.planner.batch_size, self.rows_ahead) if first else self.rows_ahead
        activations_ahead = 0 if first else self.activations_ahead
        for _ in range(LOOKAHEAD_STEPS):
            enough = walk.ahead_rows >= rows_ahead and self.opened >= activations_ahead
            if enough or self.opened >= LOOKAHEAD_MAX or self._unforeseeable(walk):
                return
            block = walk.extend(self._left if self.lengths else None)
            if block is None:
                return
            block.opened = [self._open(a) for a in block.activations]

    def ended_early(self, handle: Handle) -> None:
        """An activation ran out before its budget: learn where its stream ends (all its samples are known)."""
        key = handle.key
        if isinstance(handle, ReplicatedInstance) or self.lengths.setdefault(key, handle.known) != handle.known:
            self.short.add(key)

    def _keys(self) -> list[int | None]:
        if self.child_keys is None:
            planner = self.planner
            self.child_keys = [planner.leaf_index.get(id(s)) for s in planner.source.streamers]
        return self.child_keys

    def ended_by_budget(self, handle: Handle) -> None:
        """An activation delivered its whole budget."""
        self.spent.add(handle.key)

    def _unforeseeable(self, walk: Walk) -> bool:
        """Whether a stream active where the walk stands might end where it cannot be foreseen: one whose ends
        move, or, once some stream has ended early, one not yet seen to end."""
        if not self.lengths:
            return False
        keys, short, lengths, spent = self._keys(), self.short, self.lengths, self.spent
        return any((key := keys[child]) in short or (key not in lengths and key not in spent)
                   for child in walk.policy.live().values())

    def _left(self, slot: int) -> float:
        """Samples the stream in `slot` (where the walk stands) will make yet: its length, less what it made."""
        policy = self.planner.walk.policy
        length = self.lengths.get(self._keys()[policy.child[slot]])
        return math.inf if length is None else length - policy.produced[slot]

    def _open(self, a: Activation) -> tuple[tuple[int, Any, int, int], Handle]:
        planner, table = self.planner, self.planner.instances
        leaf = planner.source._child(a.child)
        key, index, pickled, label, replicated = planner.leaf_key(leaf)
        activation = table.activations[key] + self.pending[key]
        placement = -1 if replicated else table.placed + self.pending_placed
        # Until the epoch's first batch is planned, the planner needs what the look-ahead opens at once.
        handle = planner.open(key, index, pickled, label, a.budget, replicated, activation, placement,
                              ahead=planner.epoch_index > 0)
        self._count(key, placement, 1)
        return (key, a.budget, activation, placement), handle


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
        self._numbered: tuple[np.ndarray, list[Handle], dict[int, int]] | None = None
        """The live instances numbered for `_window` (slot -> number, the instances, id -> number); None once
        `live` changed. Without activations (rate=None) it holds for the whole epoch."""
        self.leaf: Handle | None = None
        self.driver: Iterator[Any] | None = None
        self.parts: list[tuple[RemoteInstance, np.ndarray]] = []
        self.filled = 0
        self.awaiting: list[tuple[Handle, int]] = []
        """While the walk waits: each instance of the planned window short of samples, and how many more rows it
        needs there. A batch goes out whole, so nothing is planned again until they all have them (or one ends)."""
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
             activation: int, placement: int, skip: int | list[int] = 0, count: int = 0,
             ahead: bool = False) -> Handle:
        workers = list(range(self.instances.num_workers)) if replicated else None
        return self.instances.open(key, index, pickled, label, budget, workers, activation, placement, skip,
                                   lambda: self.epoch_index, count, ahead)

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
            self.mode, self.walk, self.block_pos = "flat", source._walk(None, saving=True, span=SPAN), 0
            self.control.policy = self.walk.policy
            self._launch(self.walk.start())
            self.lookahead.top_up(self.walk)

    def _end_epoch(self) -> None:
        self.mode, self.walk, self.leaf, self.driver = None, None, None, None
        self.live.clear()
        self._numbered = None
        self.awaiting = []
        self.lookahead.reset()
        self.epoch_wanted = self.epoch_rows > 0

    def add_weights(self, at: int, weights: list[float]) -> None:
        """Reweight from batch `at` on: blocks drawn ahead with the old weights past the current one are dropped,
        and the current block, if it reaches past batch `at`'s first row, ends there.

        A pool that runs as far ahead of its trainer as its slots allow may stand right
        at that row when the weights arrive, inside a block drawn before them (a span
        runs over eight batches): the block ends where it stands.
        """
        self.pending_weights[at] = weights
        self.awaiting = []
        walk = self.walk
        if walk is not None:
            walk.rewind()
            ahead = (at - self.seq) * self.batch_size - self.filled  # rows before the first reweighted one
            if ahead >= 0 and walk.choices is not None:
                walk.cut(self.block_pos + ahead)
                if self.block_pos == len(walk.choices):
                    self._finish_block(None)

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
        if self.walk is not None:
            self.walk.set_weights(self.source.weights)
        elif self.control.policy is not None:
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
        elif self.mode == "flat" and self.epoch_index == 1 and rows:
            self.lookahead.top_up(self.walk)  # the first batch is planned: now look as far ahead as usual
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
            self._add(leaf.take(k), np.arange(self.filled, self.filled + k, dtype=ROWS))
            self.filled += k
        return True

    def _rows_from_walk(self, n: int) -> bool:
        """Rows from a window of the walk's blocks, with numpy; False while a chosen instance has too few samples.

        The window is the rest of the current block and the blocks drawn ahead after
        it, up to the batch's end. Its rows are grouped by instance once, so a stream
        that spans blocks is one part of the batch, and the Python work is per
        instance, not per slot and block. The rows before the first one that cannot be
        served yet are kept, so planning resumes where it stopped.
        """
        walk = self.walk
        if self.awaiting and not any(h.ended or h.available(need) < need for h, need in self.awaiting):
            self.awaiting = []
        if self.awaiting and not any(h.ended for h, _ in self.awaiting):
            return False
        self.awaiting = []
        while self.filled < n:
            if walk.choices is None:
                if walk.draw(self.cap) is None:
                    return True
                self.block_pos = 0
            blocks, handles, rows = self._window(n - self.filled)
            needs = np.bincount(rows).tolist()
            cut, waiting, short = len(rows), False, []
            for j, need in enumerate(needs):
                if need and (have := handles[j].available(need)) < need:
                    if not handles[j].ended:
                        short.append(j)
                    at = int(np.flatnonzero(rows == j)[have])
                    if at < cut:
                        cut, waiting = at, not handles[j].ended
            kept = self._advance_blocks(blocks, cut, waiting)
            if kept < cut:  # the window went otherwise than foreseen past `kept`: plan again from there
                cut, waiting = kept, False
            counts = needs if cut == len(rows) else np.bincount(rows[:cut], minlength=len(handles)).tolist()
            if cut:
                order = rows[:cut].argsort(kind="stable").astype(ROWS)
                if self.filled:
                    order += self.filled
                start = 0
                for j, count in enumerate(counts):
                    if count:
                        self._add(handles[j].take(count), order[start:start + count])
                        start += count
                self.filled += cut
            if waiting:
                self.awaiting = [(handles[j], needs[j] - counts[j]) for j in short]
                return False
        return True

    def _window(self, want: int) -> tuple[list[Window], list[Handle], np.ndarray]:
        """Up to `want` rows: the current block's rest, then blocks drawn ahead, each row as an index into handles.

        A block foreseen to run out at some row ends the window with that row (where the
        planner meets the end, which finishes the block) unless the end is already
        confirmed: the instance ended, and its samples left are exactly what the
        window's rows take up to there. Then the window goes on with the next block
        without that row, so a mux of short streams plans a batch in one window, not
        one per stream's end.
        """
        walk = self.walk
        slot_map, handles, index = self._live_numbers()
        choices, start = walk.choices, self.block_pos
        if not walk.replaying:  # no block drawn ahead, no end foreseen: the current block's rest
            segment = slot_map[choices[start:start + want]]
            return [Window(choices, len(segment), [])], handles, segment
        journal = list(walk.ahead)
        launched: list[tuple[int, Any]] = []
        stop, exhausted = walk.foreseen_end
        windows: list[Window] = []
        segments: list[np.ndarray] = []
        total, k, own = 0, 0, False
        while True:
            rows = want - total
            ends = None
            if exhausted is not None and start <= stop < start + rows:
                segment = slot_map[choices[start:stop]]
                j = int(slot_map[exhausted])
                handle = handles[j]
                taken = sum(int(np.count_nonzero(seg == j)) for seg in (*segments, segment))
                if isinstance(handle, RemoteInstance) and handle.ended and handle.known - handle.assigned == taken:
                    ends = exhausted
                else:  # the window ends with the row where the stream runs out
                    segment = slot_map[choices[start:stop + 1]]
            else:
                segment = slot_map[choices[start:start + rows]]
            windows.append(Window(choices, len(segment), launched, ends))
            segments.append(segment)
            total += len(segment)
            done = total >= want or (exhausted is not None and ends is None)
            if done or k + 1 >= len(journal) or len(journal[k].opened) != len(journal[k].activations):
                break
            previous, block = journal[k], journal[k + 1]
            k += 1
            if not own:  # the blocks ahead number their own instances too
                handles, index, own = list(handles), dict(index), True
            launched = [(a.slot, handle) for a, (_, handle) in zip(previous.activations, previous.opened, strict=True)]
            slot_map = slot_map.copy()
            for slot, handle in launched:
                j = index.setdefault(id(handle), len(index))
                if j == len(handles):
                    handles.append(handle)
                slot_map[slot] = j
            choices, start = block.choices, 0
            stop, exhausted = block.delivered, block.exhausted
        rows = segments[0] if len(segments) == 1 else np.concatenate(segments)
        return windows, handles, rows

    def _live_numbers(self) -> tuple[np.ndarray, list[Handle], dict[int, int]]:
        """The live instances numbered (slot -> number, the instances, id -> number), kept until `live` changes."""
        if self._numbered is None:
            slot_map = np.full(self.walk.policy.slots, -1)
            handles: list[Handle] = []
            index: dict[int, int] = {}
            for slot, handle in self.live.items():
                j = index.setdefault(id(handle), len(handles))
                if j == len(handles):
                    handles.append(handle)
                slot_map[slot] = j
            slot_map.setflags(write=False)
            self._numbered = slot_map, handles, index
        return self._numbered

    def _advance_blocks(self, windows: list[Window], cut: int, waiting: bool) -> int:
        """Move the walk past the window's first `cut` rows, finishing the blocks they complete.

        A stream that ran out at row `cut` (not `waiting`) ends its block there. If a
        block's activations did not bring the instances the window assumed, the
        window stops at that block (it never happens when the look-ahead foresaw
        right; the check keeps a batch exact if it did not). Returns the rows kept.
        """
        start = 0
        for k, window in enumerate(windows):
            if k:
                drawn = self.walk.draw(self.cap)
                self.block_pos = 0
                if drawn is not window.choices or any(
                        self.live.get(slot) is not handle for slot, handle in window.launched):
                    return start
            end = start + window.rows
            if cut < end:
                self.block_pos += cut - start
                if not waiting:
                    self._finish_block(int(window.choices[self.block_pos]))
                return cut
            self.block_pos += window.rows
            if window.ends is not None:
                self._finish_block(window.ends)
            elif self.block_pos == len(window.choices):
                self._finish_block(None)
            start = end
        return cut

    def _finish_block(self, exhausted: int | None) -> None:
        if exhausted is not None and (handle := self.live.get(exhausted)) is not None:
            self.lookahead.ended_early(handle)
        delivered = self.block_pos
        ended, activations = self.walk.finish(delivered, exhausted)
        for slot in ended:
            handle = self.live.pop(slot, None)
            if handle is not None and slot != exhausted:
                self.lookahead.ended_by_budget(handle)
        if ended:
            self._numbered = None
        self.lookahead.finished(self.walk)
        self._launch(activations)
        self.lookahead.top_up(self.walk)

    def _launch(self, activations: list[Activation]) -> None:
        for a in activations:
            self.live[a.slot] = self.activate(self.source._child(a.child), a.budget)
            self._numbered = None

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
        self.parts = [(inst, np.array(r, dtype=ROWS)) for inst, r in rows.items()]
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
            self.walk = source._walk(None, saving=True, span=SPAN)
            self.walk.set_state(state["walk"])
            self.mode, self.block_pos = "flat", state["pos"]
            self.control.policy = self.walk.policy
            children = self.walk.policy.live()
            for slot, inst in state["live"]:
                self.live[slot] = self._reopen(source._child(children[slot]), inst)
            self._numbered = None
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

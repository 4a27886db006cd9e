"""The instance table: the mux process's view of every stream instance running in a worker.

An instance is one activation of a leaf stream (a replicated leaf has one per
worker). The table opens them (placing each activation on the next worker in turn,
so activations of one stream spread over every core), tracks how many samples each
has ready, asks for more when the planner needs them, and closes instances once
nothing refers to them: not the planner, not the look-ahead, not an unwritten
batch. Messages go out through a `send(worker, message)` callable, so the table is
tested without sockets.

Availability is asked without blocking: `available(need)` says how many of the next
`need` samples are ready now, and asks the worker for more if that is too few.
"""

from __future__ import annotations

import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from .._messages import Message, Open, Want
from .._process import derive_seed
from .._walk import BLOCK

Send = Callable[[int, Message], None]


class RemoteInstance:
    """One instance in one worker. Counts are absolute positions in the activation's samples.

    known: made ready by the worker; assigned: given to rows by the planner;
    filled: written into slots; requested: asked for with WANT. window: samples the worker keeps ready ahead.
    """

    __slots__ = ("__weakref__", "activation", "assigned", "budget", "ended", "filled", "iid", "key", "known", "label",
                 "open", "placement", "requested", "table", "window", "worker")

    def __init__(self, table: InstanceTable, open_msg: Open, key: int, worker: int, placement: int,
                 label: str) -> None:
        self.table, self.open, self.key, self.worker, self.placement = table, open_msg, key, worker, placement
        self.iid, self.activation, self.budget, self.label = open_msg.iid, open_msg.activation, open_msg.budget, label
        self.known = self.assigned = self.requested = self.filled = open_msg.skip
        self.window = open_msg.window
        self.ended = False

    def available(self, need: int) -> int:
        """How many of the next `need` samples are ready; asks the worker for the rest if it may make more."""
        have = self.known - self.assigned
        if have < need and not self.ended:
            self.table.want(self, self.assigned + need)
        return min(need, have)

    def drained(self) -> bool:
        """Ended, and every sample it made was given to a row."""
        return self.ended and self.assigned >= self.known

    def take(self, n: int) -> list[tuple[RemoteInstance, int]]:
        """Give the next n ready samples to rows (the caller checked they are available)."""
        self.assigned += n
        return [(self, n)] if n else []

    def state(self) -> list[Any]:
        """[key, activation, budget, placement, position]: enough to open it again where it stands."""
        return [self.key, self.activation, self.budget, self.placement, self.assigned]

    # Row-by-row use by nested muxes (the in-process driver pulls one row at a time).
    def __iter__(self) -> Iterator[RemoteInstance]:
        return self

    def __next__(self) -> RemoteInstance:
        if self.available(1) == 0:
            self.table.wait(lambda: self.known > self.assigned or self.ended)
            if self.known <= self.assigned:
                raise StopIteration
        self.assigned += 1
        return self

    def __del__(self) -> None:
        self.table.closing[self.worker].append(self.iid)


class ReplicatedInstance:
    """One activation of a replicated stream: an instance per worker; batch k takes its rows from replica k mod R.

    When that replica has run dry, the next live one serves. Tying replicas to batches
    makes a batch of a replicated stream the work of one worker, and gives the order
    of a stream whose replica r reads batches r, r + R, ...
    """

    def __init__(self, replicas: list[RemoteInstance], budget: int | None, batch_index: Callable[[], int],
                 count: int = 0) -> None:
        self.replicas, self.budget, self.batch_index, self.count = replicas, budget, batch_index, count
        first = replicas[0]
        self.key, self.activation, self.label = first.key, first.activation, first.label

    def _order(self) -> Iterator[RemoteInstance]:
        """The replicas to draw from for the current batch, the preferred one first, drained ones out (lazily:
        the preferred one usually serves the whole batch)."""
        replicas = self.replicas
        k = self.batch_index()
        for i in range(len(replicas)):
            replica = replicas[(k + i) % len(replicas)]
            if not replica.drained():
                yield replica

    def _limit(self, n: int) -> int:
        return n if self.budget is None else min(n, self.budget - self.count)

    @property
    def ended(self) -> bool:
        return all(r.ended for r in self.replicas) or self._limit(1) == 0

    def drained(self) -> bool:
        return self._limit(1) == 0 or all(r.drained() for r in self.replicas)

    def available(self, need: int) -> int:
        """As RemoteInstance.available, in replica order: a later replica counts only once earlier ones ended."""
        need, total = self._limit(need), 0
        preferred = self.replicas[self.batch_index() % len(self.replicas)]
        if preferred.known - preferred.assigned >= need:  # the usual case: the preferred replica has them ready
            return need
        if not preferred.drained():  # without walking the order
            have = preferred.available(need)
            if have >= need or not preferred.ended:
                return have
        for replica in self._order():
            total += replica.available(need - total)
            if total >= need or not replica.ended:
                break
        return total

    def take(self, n: int) -> list[tuple[RemoteInstance, int]]:
        preferred = self.replicas[self.batch_index() % len(self.replicas)]
        if n and preferred.known - preferred.assigned >= n:  # the usual case: the preferred replica has them
            self.count += n
            preferred.assigned += n
            return [(preferred, n)]
        runs = []
        for replica in self._order():
            k = min(n, replica.known - replica.assigned)
            runs += replica.take(k)
            n -= k
            self.count += k
            if n == 0:
                break
        return runs

    def state(self) -> list[Any]:
        """As RemoteInstance.state, with a position per replica, then the rows taken in all."""
        return [self.key, self.activation, self.budget, -1, [r.assigned for r in self.replicas], self.count]

    def __iter__(self) -> Iterator[RemoteInstance]:
        return self

    def __next__(self) -> RemoteInstance:
        if self.available(1) == 0:
            self.replicas[0].table.wait(lambda: self.available(1) > 0 or self.drained())
        runs = self.take(1)
        if not runs:
            raise StopIteration
        return runs[0][0]


Handle = RemoteInstance | ReplicatedInstance


class InstanceTable:
    """Every open instance, their activation counts and placement, and the messages that open and close them."""

    def __init__(self, send: Send, num_workers: int, seed: int, rank: int, slot_rows: int) -> None:
        self.send, self.num_workers, self.seed, self.rank, self.slot_rows = send, num_workers, seed, rank, slot_rows
        self.instances: weakref.WeakValueDictionary[int, RemoteInstance] = weakref.WeakValueDictionary()
        self.closing: defaultdict[int, list[int]] = defaultdict(list)
        self.activations: Counter[int] = Counter()
        """Confirmed activations per leaf key: the next one's number, which seeds it."""
        self.counts: list[tuple[int, int]] | None = None
        """`activations` sorted, for snapshots; None once it changed."""
        self.placed = 0
        """Confirmed activations of non-replicated leaves: the next one's worker is placed % workers."""
        self.next_iid = 0
        self.waiting: set[int] = set()
        self.wait: Callable[[Callable[[], bool]], None] = _no_wait

    def window(self, budget: int | None) -> int:
        """Samples a worker keeps ready for a new instance: the slots' worth of rows shared out, or its whole budget.

        An activation with a budget of up to four slots' worth of rows is made ready in
        one go, right after its start: the worker's producer then never has to come
        back to it while another stream's start-up holds it.
        """
        share = max(BLOCK, self.slot_rows // max(1, len(self.instances) + 1))
        return share if budget is None else max(share, min(budget, 4 * self.slot_rows))

    def open(self, key: int, leaf: int, pickled: Any, label: str, budget: int | None, workers: list[int] | None,
             activation: int, placement: int, skip: int | list[int] = 0,
             batch_index: Callable[[], int] = lambda: 0, count: int = 0, ahead: bool = False) -> Handle:
        """Open an activation in `workers` (one instance per worker: replicas) or, for None, on worker placement % N.

        `skip` (per replica for replicas) starts it past samples already consumed. `ahead`: the look-ahead
        opens it well before the planner needs it. If its window then holds its whole budget, the OPEN asks
        for every sample: the worker makes them all and reports them with its next news (within
        NEWS_SECONDS), and the planner, reaching them sooner, waits for that news instead of asking again.
        Asking (WANT) would make the worker's report urgent: a pool whose planner keeps up with its
        producers, as in `mux-rate`, chased every activation with a WANT and an AVAIL that way, and spent
        a third more CPU outside user code.
        """
        replicated = workers is not None
        targets = workers if replicated else [placement % self.num_workers]
        made = []
        for replica, worker in enumerate(targets):
            iid = self.next_iid
            self.next_iid += 1
            own_skip = skip[replica] if isinstance(skip, list) else skip
            msg = Open(iid, leaf, replica, len(targets), None if replicated else budget,
                       derive_seed(self.seed, key, activation, replica, self.rank), activation,
                       self.window(budget), pickled, own_skip)
            inst = RemoteInstance(self, msg, key, worker, placement, label)
            if ahead and not replicated and budget is not None and budget <= msg.window:
                inst.requested = budget
            self.instances[iid] = inst
            self.send(worker, msg)
            made.append(inst)
        if replicated:
            return ReplicatedInstance(made, budget, batch_index, count)
        return made[0]

    def confirm(self, key: int, replicated: bool) -> tuple[int, int]:
        """Count an activation the policy really made; its (activation number, placement)."""
        activation, placement = self.activations[key], self.placed
        self.activations[key] += 1
        self.counts = None
        if not replicated:
            self.placed += 1
        return activation, placement

    def want(self, inst: RemoteInstance, target: int) -> None:
        """Ask for samples up to `target`: the planner waits for them.

        A wait means the instance's window did not cover the time between a worker
        making samples and the planner learning of them, at the rate this instance is
        drawn. So each new wait doubles its window, up to a slots' worth of rows (or its
        budget): a stream drawn often, or by a busy worker, soon keeps enough ready,
        and one that never made the planner wait keeps its first share.
        """
        if inst.budget is not None:
            target = min(target, inst.budget)
        self.waiting.add(inst.worker)
        if target > inst.requested:
            inst.requested = target
            cap = self.slot_rows if inst.budget is None else min(inst.budget, self.slot_rows)
            inst.window = max(inst.window, min(2 * inst.window, cap))
            self.send(inst.worker, Want(inst.iid, target, inst.window))

    def on_avail(self, reports: list[list[Any]]) -> None:
        for iid, ready, ended in reports:
            inst = self.instances.get(iid)
            if inst is not None:
                inst.known = max(inst.known, ready)
                inst.ended = inst.ended or ended

    def take_closed(self) -> dict[int, list[int]]:
        """Per worker, the instances nothing refers to any more: to be closed."""
        closed = {worker: iids for worker, iids in self.closing.items() if iids}
        self.closing.clear()
        for iids in closed.values():
            for iid in iids:
                self.instances.pop(iid, None)
        return closed

    def hosted_by(self, worker: int) -> list[RemoteInstance]:
        """The open instances in a worker, oldest first."""
        return [inst for iid, inst in sorted(self.instances.items()) if inst.worker == worker]

    def state(self) -> dict[str, Any]:
        """Activation counts and placement (the counts' list is shared by snapshots until one changes)."""
        if self.counts is None:
            self.counts = sorted(self.activations.items())
        return {"activations": self.counts, "placed": self.placed}

    def set_state(self, state: dict[str, Any]) -> None:
        self.activations = Counter({int(k): int(v) for k, v in state["activations"]})
        self.counts = None
        self.placed = state["placed"]


def _no_wait(ready: Callable[[], bool]) -> None:
    raise RuntimeError("InstanceTable.wait was not given a way to wait for samples")

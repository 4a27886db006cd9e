"""The slot table: which shared-memory slot holds which batch, and the in-order READY and END messages.

A slot's life::

    free ──assign──> filling ──last FILLED──> done ──all earlier batches READY──> out ──FREE──> free
                                               └── a dropped short last batch ─────────────────> free

`out` slots were announced READY: the trainer has them queued or holds views of
them. READY goes out in sequence order whatever order workers finish in, and an
epoch's END right after the READY of its last batch. Pure bookkeeping: messages for
the trainer collect in `outbox`; nothing here touches a socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._messages import End, Message, Ready


@dataclass
class Filling:
    """A batch being written into a slot by workers.

    `parts` keeps each worker's rows in wire form (so a restarted worker can be sent
    them again) and `owed` the instances and counts it writes for them (so those
    instances stay open, and learn what was written, once the worker reports).
    """

    seq: int
    epoch: int
    index: int
    rows: int
    discard: bool
    parts: dict[int, list[list[Any]]]
    owed: dict[int, list[tuple[Any, int]]]
    objects: dict[int, list[Any]] = field(default_factory=dict)


class SlotTable:
    def __init__(self, slots: int, first_seq: int = 0) -> None:
        self.free: deque[int] = deque(range(slots))
        self.size = slots
        self.filling: dict[int, Filling] = {}
        self.done: dict[int, tuple[int, Filling]] = {}
        self.out: dict[int, int] = {}
        self.next_ready = first_seq
        self.floor = first_seq
        """No batch before this one can still be unconsumed: the trainer has freed a slot of a later one."""
        self.epoch_ends: dict[int, tuple[int, int]] = {}
        self.outbox: list[Message] = []

    def add(self, first: int, count: int) -> None:
        """The arena grew: slots first .. first + count - 1 are new and free."""
        self.free.extend(range(first, first + count))
        self.size = max(self.size, first + count)

    def assign(self, filling: Filling) -> int:
        """Put a planned batch into a free slot (the caller checked there is one); the slot."""
        slot = self.free.popleft()
        self.filling[slot] = filling
        return slot

    def filled(self, slot: int, worker: int, objects: dict[int, list[Any]]) -> None:
        """The worker wrote its rows of the slot; a repeated report (after a restart) is ignored."""
        filling = self.filling.get(slot)
        if filling is None or worker not in filling.owed:
            return
        for inst, count in filling.owed.pop(worker):
            inst.filled += count
        filling.objects.update(objects)
        if filling.owed:
            return
        del self.filling[slot]
        self.done[filling.seq] = (slot, filling)
        self._announce()

    def _announce(self) -> None:
        while self.next_ready in self.done:
            slot, f = self.done.pop(self.next_ready)
            self.next_ready += 1
            if f.discard:
                self.free.append(slot)
            else:
                objects = [f.objects[r] for r in range(f.rows)] if f.objects else []
                self.out[slot] = f.seq
                self._send_ready([slot, f.seq, f.epoch, f.index, f.rows, objects])
            if self.next_ready in self.epoch_ends:
                self.outbox.append(End(*self.epoch_ends.pop(self.next_ready)))

    def _send_ready(self, batch: list[Any]) -> None:
        last = self.outbox[-1] if self.outbox else None
        if isinstance(last, Ready):
            last.batches.append(batch)
        else:
            self.outbox.append(Ready([batch]))

    def end_epoch(self, after: int, epoch: int, batches: int) -> None:
        """Epoch `epoch` had `batches` batches, the last of them before sequence number `after`."""
        if self.next_ready == after:
            self.outbox.append(End(epoch, batches))
        else:
            self.epoch_ends[after] = (epoch, batches)

    def skipped(self, seq: int) -> None:
        """Batches before `seq` were consumed before a resume: none of them will be filled."""
        self.next_ready = self.floor = seq

    def release(self, slots: list[int]) -> None:
        """The trainer dropped its last view of these slots."""
        for slot in slots:
            seq = self.out.pop(slot)
            self.floor = max(self.floor, seq + 1)
            self.free.append(slot)

    def owed_by(self, worker: int) -> list[tuple[int, list[list[Any]]]]:
        """(slot, rows in wire form) of every batch still waiting on the worker, in sequence order."""
        waiting = sorted((f.seq, slot) for slot, f in self.filling.items() if worker in f.owed)
        return [(slot, self.filling[slot].parts[worker]) for _, slot in waiting]

    def waiting_on(self) -> set[int]:
        return {w for f in self.filling.values() for w in f.owed}

    def counts(self) -> dict[str, int]:
        return {"slots_free": len(self.free), "slots_filling": len(self.filling) + len(self.done)}

"""Batch: the trainer's zero-copy view of one shared-memory slot."""

from __future__ import annotations

import functools
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ._errors import PoolClosedError


class Batch(Mapping):
    """A batch of samples: field -> array (a view over shared memory) or list (object fields).

    The slot behind a batch returns to the pool only when no view of it is left, so an
    array you keep never changes under you. Keep fewer than `prefetch` batches alive,
    copy what you keep (`np.array(batch["x"])`), or call `release()` when done early.

    Attributes:
        size: rows that hold samples (smaller than the arrays' length when padded).
        index: position of the batch in its epoch.
        epoch: which epoch (pass over a finite source) the batch belongs to.
        seq: position of the batch among all the pool's batches, epochs included.
    """

    __slots__ = ("_fields", "_release", "epoch", "index", "seq", "size")

    def __init__(self, fields: dict[Any, Any], size: int, index: int, epoch: int,
                 release: Callable[[], Any], seq: int) -> None:
        self._fields = fields
        self.size, self.index, self.epoch, self.seq = size, index, epoch, seq
        self._release = release

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._fields[key]
        except KeyError:
            if not self._fields:
                raise PoolClosedError(f"batch {self.index} was released; copy data you want to keep") from None
            raise

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def release(self) -> None:
        """Give the slot back now, even if views of it remain (they may then change)."""
        self._fields = {}
        self._release()

    def __repr__(self) -> str:
        parts = []
        for key, value in self._fields.items():
            kind = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else f"list[{len(value)}]"
            parts.append(f"{key!r}: {kind}")
        return f"Batch(epoch={self.epoch}, index={self.index}, size={self.size}, {{{', '.join(parts)}}})"


class SlotReleases:
    """Which slots have no view left, found without running Python code when a view dies.

    Each delivery's holder array gets a weak reference whose callback is a builtin
    (`deque.append`): the interpreter runs no bytecode in it, so a Ctrl-C can never
    land inside it and be swallowed as "Exception ignored", as it can inside a
    `weakref.finalize` callback written in Python. The pool maps dead references back
    to slots when it next talks to the mux process.
    """

    def __init__(self) -> None:
        self.dead: deque[weakref.ref] = deque()
        self.slot_of: dict[int, tuple[weakref.ref, int]] = {}
        """id of each live reference (a reference to an array does not hash) -> (the reference, its slot)."""
        self.released: list[int] = []

    def views(self, buffer: Any, offset: int, nbytes: int, slot: int) -> tuple[np.ndarray, Callable[[], None]]:
        """A fresh array over one slot's bytes, and the batch's explicit release.

        Every view derived from the returned array keeps it alive (numpy stops collapsing
        view bases at an array whose base is not an array), so its death is an exact
        "no view of this delivery remains" signal.
        """
        holder = np.frombuffer(buffer, np.uint8, count=nbytes, offset=offset)
        ref = weakref.ref(holder, self.dead.append)
        self.slot_of[id(ref)] = (ref, slot)
        return holder, functools.partial(self._release, ref)

    def _release(self, ref: weakref.ref) -> None:
        entry = self.slot_of.pop(id(ref), None)
        if entry is not None:
            self.released.append(entry[1])

    def take(self) -> list[int]:
        """The slots released since the last call, each once."""
        while self.dead:
            self._release(self.dead.popleft())
        released, self.released = self.released, []
        return released

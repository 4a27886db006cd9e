"""prefetch.torch: batches as torch tensors, on the CPU without a copy, or on a GPU through page-locked slots.

    loader = prefetch.torch.Loader(mux, batch_size=256, workers=8, device="cuda")
    for batch in loader:            # a dict (dict samples) or tuple (tuple samples) of CUDA tensors
        loss = model(batch["x"]) ...

On the CPU a batch's tensors share its shared-memory slot (`torch.from_numpy`); the
slot returns to the pool when the last tensor made from it is gone.

With a CUDA device, each slot segment is page-locked once (`cudaHostRegister`) as
the pool creates it, and unregistered before it is unmapped. Batches are copied with
`non_blocking=True` on a side stream, one batch ahead of the one you get, and a slot
returns to the pool as soon as its copy's CUDA event has completed: you never hold
slots, and the copy engine, not Python, sets the pace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ._adapters import Adapter, Batches, structure
from ._batch import Batch
from ._errors import PrefetchError

AHEAD = 2
"""Batches whose copies are issued before the one handed out (the one handed out plus one being copied)."""


class Loader(Adapter):
    """Iterate a stream, a mux, a `Pool` or a volume loader as batches of `torch.Tensor`.

    `source` is a `Streamer` or mux (pooled with `batch_size` and the other keyword
    arguments of `Pool`), an existing `Pool`, or a loader from a volume's `flow()`.
    `device=None` gives CPU tensors that share the slots; a CUDA device gives tensors
    on it, copied from page-locked slots. `state_dict()` and `load_state_dict()`
    follow torchdata's StatefulDataLoader, so Lightning and accelerate can checkpoint it.
    """

    def __init__(self, source: Any, *, batch_size: int | None = None, device: Any = None,
                 **pool_options: Any) -> None:
        self.device = None if device is None else torch.device(device)
        if self.device is not None and self.device.type not in ("cpu", "cuda"):
            raise PrefetchError(f"prefetch.torch.Loader: device must be the CPU or a CUDA device, got {device!r}")
        if self.device is not None and self.device.type == "cpu":
            self.device = None
        self.batches = Batches(source, batch_size, pool_options, "prefetch.torch.Loader")
        self._pinned: dict[int, int] = {}
        self._watched: Any = None
        self._last: Batch | None = None
        """The last batch handed out on the CUDA path (later ones may already be copying, in `_ahead`)."""
        self._ahead: deque[tuple[Batch, Any, Any]] = deque()

    def __iter__(self) -> Iterator[Any]:
        if self.device is None:
            return (structure(batch, torch.from_numpy) for batch in self.batches)
        return self._to_device()

    # --- the CUDA path -----------------------------------------------------------------------------------

    def _pin(self, mapping: Any) -> None:
        view = np.frombuffer(mapping, np.uint8)
        pointer, size = view.ctypes.data, view.nbytes
        del view
        error = torch.cuda.cudart().cudaHostRegister(pointer, size, 0)
        if int(error) != 0:
            raise PrefetchError(f"prefetch.torch.Loader: cudaHostRegister of a {size / 1e6:,.0f} MB slot segment "
                                f"failed with CUDA error {int(error)}")
        self._pinned[id(mapping)] = pointer

    def _unpin(self, mapping: Any) -> None:
        pointer = self._pinned.pop(id(mapping), None)
        if pointer is not None:
            torch.cuda.cudart().cudaHostUnregister(pointer)

    def _to_device(self) -> Iterator[Any]:
        """Copy each batch on a side stream, AHEAD batches before it is handed out; free its slot once copied.

        A host batch is released when it has been handed out and its copy's event has
        completed, so batches copied ahead still count as not consumed (state_dict).
        """
        device, stream = self.device, torch.cuda.Stream(self.device)
        ahead: deque[tuple[Batch, Any, torch.cuda.Event]] = deque()
        self._ahead = ahead
        handed: deque[tuple[Batch, torch.cuda.Event]] = deque()
        source = iter(self.batches)

        def issue() -> None:
            batch = next(source, None)
            if batch is None:
                return
            pool = self.batches.pool
            if self._watched is not pool:
                pool._watch_segments(self._pin, self._unpin)
                self._watched = pool
            with torch.cuda.stream(stream):
                tensors = structure(batch, lambda a: torch.from_numpy(a).to(device, non_blocking=True))
                done = torch.cuda.Event()
                done.record(stream)
            ahead.append((batch, tensors, done))

        for _ in range(AHEAD):
            issue()
        current = torch.cuda.current_stream(device)
        try:
            while ahead:
                batch, tensors, done = ahead.popleft()
                current.wait_event(done)
                for tensor in tensors.values() if isinstance(tensors, dict) else tensors:
                    if isinstance(tensor, torch.Tensor):
                        tensor.record_stream(current)
                handed.append((batch, done))
                while handed and handed[0][1].query():
                    handed.popleft()[0].release()
                issue()
                self._last = batch
                yield tensors
        finally:
            for batch, done in handed:
                done.synchronize()
                batch.release()

    # --- checkpoints and shutdown ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any] | None:
        """Where training stands: batches handed out count as consumed, those copied ahead do not."""
        last = self._last
        pool = self.batches.pool
        if self.device is None or last is None or pool is None:
            return self.batches.state_dict()
        later_of_epoch = any(batch.epoch == last.epoch for batch, _, _ in self._ahead)
        return pool._state_through(last, pool._ended_through >= last.epoch and not later_of_epoch)

"""What the framework adapters share: the batches they wrap (a pool, a volume loader, or a source to pool).

An adapter takes a `Streamer` or mux (and makes a `Pool` of it), an existing `Pool`,
or a loader from a volume's `flow()`, and iterates its batches epoch by epoch. This
module holds that choice, the epoch length when it is known, and checkpointing, so
that each adapter only converts arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._batch import Batch
from ._errors import ArgumentError
from ._pool import Pool
from ._streamer import Streamer


class Batches:
    """The batches an adapter converts, from whatever it was given."""

    def __init__(self, source: Any, batch_size: int | None, pool_options: dict[str, Any], what: str,
                 defaults: dict[str, Any] | None = None) -> None:
        """`defaults` are pool options that apply only when this makes the pool (and the caller gave none)."""
        from .volumes.loader import Loader as VolumeLoader

        self.owned = False
        if isinstance(source, (Pool, VolumeLoader)):
            if batch_size is not None or pool_options:
                raise ArgumentError(f"{what}: batch_size and pool options belong to the Pool or loader you passed, "
                                    f"not to the adapter (got {['batch_size'] * (batch_size is not None)}"
                                    f"{sorted(pool_options)})")
            self.source = source
        elif isinstance(source, Streamer):
            if batch_size is None:
                raise ArgumentError(f"{what}: batch_size is needed to pool a stream")
            self.source = Pool(source, batch_size=batch_size, **{**(defaults or {}), **pool_options})
            self.owned = True
        else:
            raise ArgumentError(f"{what}: source must be a prefetch.Streamer or mux, a Pool, or a loader from "
                                f"flow(), got {type(source).__name__}")

    @property
    def pool(self) -> Pool | None:
        """The pool behind the batches (a volume loader starts its pool on first use)."""
        return self.source if isinstance(self.source, Pool) else self.source.pool

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.source)

    def __len__(self) -> int:
        """Batches per epoch, where known (a volume loader); a TypeError otherwise, as for any iterable."""
        if isinstance(self.source, Pool):
            raise TypeError("a pool over a stream does not know its epoch's length")
        return len(self.source)

    def state_dict(self) -> dict[str, Any] | None:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)

    def close(self) -> None:
        """Close the pool this made; a pool or loader you passed stays yours to close."""
        if self.owned:
            self.source.close()


class Adapter:
    """Base of the torch and JAX loaders: epoch length, checkpoints and shutdown come from their `Batches`."""

    batches: Batches

    def __len__(self) -> int:
        return len(self.batches)

    def state_dict(self) -> dict[str, Any] | None:
        """Where training stands (see Pool.state_dict)."""
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from state_dict() before iterating."""
        self.batches.load_state_dict(state)

    def close(self) -> None:
        """Close the pool this loader made; a pool or loader you passed stays yours."""
        self.batches.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def is_tuple(batch: Batch) -> bool:
    """Whether the batch's samples were tuples (its keys are then 0 .. n-1)."""
    return all(isinstance(key, int) for key in batch)


def structure(batch: Batch, convert: Any) -> Any:
    """The batch as a tuple (tuple samples) or dict (dict samples) of converted arrays; object fields stay lists."""
    fields = {key: (value if isinstance(value, list) else convert(value)) for key, value in batch.items()}
    return tuple(fields.values()) if is_tuple(batch) else fields

"""prefetch.jax: batches as `jax.Array`, on the default device or laid out by a sharding.

    loader = prefetch.jax.Loader(mux, batch_size=256, workers=8)
    for batch in loader:            # a dict (dict samples) or tuple (tuple samples) of jax.Array
        params = step(params, batch)

With `sharding=`, each process's batches become its part of global arrays
(`jax.make_array_from_process_local_data`), and when `jax.distributed` is initialised
each process reads its own part of every epoch (rank `jax.process_index()` of
`jax.process_count()`), unless `rank` and `world_size` are given.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax

from ._adapters import Adapter, Batches, structure


class Loader(Adapter):
    """Iterate a stream, a mux, a `Pool` or a volume loader as batches of `jax.Array`.

    `source` is a `Streamer` or mux (pooled with `batch_size` and the other keyword
    arguments of `Pool`), an existing `Pool`, or a loader from a volume's `flow()`.
    """

    def __init__(self, source: Any, *, batch_size: int | None = None, sharding: Any = None,
                 **pool_options: Any) -> None:
        ranks = {"rank": jax.process_index(), "world_size": jax.process_count()} if jax.process_count() > 1 else {}
        self.sharding = sharding
        self.batches = Batches(source, batch_size, pool_options, "prefetch.jax.Loader", defaults=ranks)

    def _put(self, array: Any) -> jax.Array:
        if self.sharding is None:
            return jax.device_put(array)
        return jax.make_array_from_process_local_data(self.sharding, array)

    def __iter__(self) -> Iterator[Any]:
        return (structure(batch, self._put) for batch in self.batches)

"""prefetch.keras: a Keras 3 `PyDataset` over a pool, for `model.fit` under any backend.

    train, test, validation = prefetch.bind_data_generator(...).flow()
    model.fit(prefetch.keras.Loader(train), validation_data=prefetch.keras.Loader(validation), epochs=3)

Tuple samples give `(x, y)` or `(x, y, sample_weight)` as Keras expects; dict samples
give a dict. Each epoch of `fit` is an epoch of the pool. A volume loader knows its
batches per epoch; a pool over finite streams learns it from its first epoch, which
Keras then needs `steps_per_epoch` for (given here; without it, fit raises ArgumentError at
once instead of looping for ever).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras

from ._adapters import Batches, structure
from ._errors import ArgumentError


class Loader(keras.utils.PyDataset):
    """Batches of numpy arrays for Keras: sequential, so the index Keras asks for is the next batch.

    `source` is a `Streamer` or mux (pooled with `batch_size` and the other keyword
    arguments of `Pool`), an existing `Pool`, or a loader from a volume's `flow()`.
    """

    def __init__(self, source: Any, *, batch_size: int | None = None, steps_per_epoch: int | None = None,
                 **pool_options: Any) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.batches = Batches(source, batch_size, pool_options, "prefetch.keras.Loader")
        self.steps = steps_per_epoch
        self._epoch: Iterator[Any] | None = None

    @property
    def num_batches(self) -> int:
        """Batches per epoch: `steps_per_epoch`, a volume loader's length, or what the pool's first epoch had.

        Keras would loop for ever over an epoch of unknown length, so that is an error.
        """
        if self.steps is not None:
            return self.steps
        try:
            return len(self.batches)
        except TypeError:
            pool = self.batches.pool
            if pool is not None and pool._epoch_batches:
                return pool._epoch_batches
        raise ArgumentError("prefetch.keras.Loader: the number of batches per epoch of this source is not known "
                            "before its first epoch ends; pass steps_per_epoch= to the Loader (or to fit)")

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> Any:
        if self._epoch is None:
            self._epoch = iter(self.batches)
        batch = next(self._epoch, None)
        if batch is None:
            self._epoch = iter(self.batches)
            batch = next(self._epoch, None)
            if batch is None:
                raise ArgumentError("prefetch.keras.Loader: the source has no batches")
        return structure(batch, _own)

    def on_epoch_end(self) -> None:
        self._epoch = None

    def close(self) -> None:
        """Close the pool this loader made."""
        self.batches.close()


def _own(array: Any) -> Any:
    """A copy: Keras may keep a batch (or hand it to another thread) after asking for the next one."""
    return array.copy()

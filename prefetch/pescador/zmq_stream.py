"""pescador's ZMQStreamer: a streamer run in a background process, here by a prefetch pool.

The streamer's samples are batched in a worker process and travel through shared
memory, so a ZMQStreamer gains the pool's error reporting (the worker's traceback),
cleanup (no process or segment left behind) and speed. Samples come out one by one,
as they went in (dicts or tuples of arrays).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._adapters import is_tuple
from .._pool import Pool
from .core import Streamer

__all__ = ["ZMQStreamer"]

BATCH = 64
"""Samples a worker writes per shared-memory slot; they come out one at a time."""


class ZMQStreamer(Streamer):
    """Run `streamer` in a background process and iterate its samples here.

    `min_port`, `max_port`, `max_tries` and `copy` are accepted for pescador's
    signature; the pool picks its own transport. `timeout` (seconds) bounds the wait
    for each batch.
    """

    def __init__(self, streamer: Any, min_port: int = 49152, max_port: int = 65535, max_tries: int = 100,
                 copy: bool = False, timeout: float | None = None) -> None:
        super().__init__(streamer)
        self.min_port, self.max_port, self.max_tries, self.copy = min_port, max_port, max_tries, copy
        self.timeout = timeout

    def _iterate(self, max_iter: int | None) -> Iterator[Any]:
        if max_iter == 0:
            return
        source = self.streamer if isinstance(self.streamer, Streamer) else Streamer(self.streamer)
        count = 0
        with self, Pool(source, batch_size=BATCH, workers=1, timeout=self.timeout, last_batch="partial") as pool:
            for batch in pool:
                fields = {key: (value if isinstance(value, list) else value.copy()) for key, value in batch.items()}
                tuples = is_tuple(batch)
                batch.release()
                for row in range(batch.size):
                    sample = {key: value[row] for key, value in fields.items()}
                    yield tuple(sample.values()) if tuples else sample
                    count += 1
                    if max_iter is not None and count >= max_iter:
                        return

"""prefetch: keep a training loop fed.

Streamers and muxes with pescador's semantics, run in process or by a pool of
worker processes that write samples straight into shared memory.
"""

from ._batch import Batch
from ._buffer import buffer_stream
from ._errors import (
    ArgumentError,
    DataError,
    EmptyStreamError,
    MuxStarvedError,
    PoolClosedError,
    PoolStartError,
    PoolTimeoutError,
    PrefetchError,
    SchemaError,
    SlotsExhaustedError,
    WorkerDiedError,
    WorkerError,
)
from ._mux import BaseMux, ChainMux, RoundRobinMux, ShuffledMux, StochasticMux
from ._pool import Pool
from ._streamer import Streamer, streamable
from ._worker_info import WorkerInfo, worker_info

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "BaseMux",
    "Batch",
    "ChainMux",
    "DataError",
    "EmptyStreamError",
    "MuxStarvedError",
    "Pool",
    "PoolClosedError",
    "PoolStartError",
    "PoolTimeoutError",
    "PrefetchError",
    "RoundRobinMux",
    "SchemaError",
    "ShuffledMux",
    "SlotsExhaustedError",
    "StochasticMux",
    "Streamer",
    "WorkerDiedError",
    "WorkerError",
    "WorkerInfo",
    "buffer_stream",
    "streamable",
    "worker_info",
]

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
    SharedMemoryError,
    SlotsExhaustedError,
    WorkerDiedError,
    WorkerError,
)
from ._mux import BaseMux, ChainMux, RoundRobinMux, ShuffledMux, StochasticMux
from ._pool import Pool
from ._streamer import Streamer, streamable
from ._worker_info import WorkerInfo, worker_info
from .volumes.errors import CorruptIndexError, FetchError, MetadataError, VolumeError, VolumeLockedError
from .volumes.loader import DataGenerator, Loader, bind_data_generator
from .volumes.query import QuerySyntaxError
from .volumes.selection import DataPoint
from .volumes.store import QueryResult, Volume

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "BaseMux",
    "Batch",
    "ChainMux",
    "CorruptIndexError",
    "DataError",
    "DataGenerator",
    "DataPoint",
    "EmptyStreamError",
    "FetchError",
    "Loader",
    "MetadataError",
    "MuxStarvedError",
    "Pool",
    "PoolClosedError",
    "PoolStartError",
    "PoolTimeoutError",
    "PrefetchError",
    "QueryResult",
    "QuerySyntaxError",
    "RoundRobinMux",
    "SchemaError",
    "SharedMemoryError",
    "ShuffledMux",
    "SlotsExhaustedError",
    "StochasticMux",
    "Streamer",
    "Volume",
    "VolumeError",
    "VolumeLockedError",
    "WorkerDiedError",
    "WorkerError",
    "WorkerInfo",
    "bind_data_generator",
    "buffer_stream",
    "streamable",
    "worker_info",
]

"""prefetch: keep a training loop fed.

Streamers and muxes with pescador's semantics, run in process or by a pool of
worker processes that write samples straight into shared memory.
"""

from ._buffer import buffer_stream
from ._errors import (
    ArgumentError,
    DataError,
    EmptyStreamError,
    MuxStarvedError,
    PrefetchError,
    SchemaError,
)
from ._mux import BaseMux, ChainMux, RoundRobinMux, ShuffledMux, StochasticMux
from ._streamer import Streamer, streamable

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "BaseMux",
    "ChainMux",
    "DataError",
    "EmptyStreamError",
    "MuxStarvedError",
    "PrefetchError",
    "RoundRobinMux",
    "SchemaError",
    "ShuffledMux",
    "StochasticMux",
    "Streamer",
    "buffer_stream",
    "streamable",
]

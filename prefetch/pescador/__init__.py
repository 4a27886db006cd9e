"""prefetch.pescador: pescador 3.0's API on prefetch, for code that changes only its import lines.

    import prefetch.pescador as pescador
    from prefetch.pescador.maps import buffer_stream

The package has pescador's layout (`core`, `mux`, `maps`, `util`, `zmq_stream`,
`exceptions`). Streams and muxes are prefetch's, with pescador's introspection on
top; `ZMQStreamer` runs its streamer in a background prefetch pool. The README lists
where prefetch differs on purpose, with the pescador test each difference changes.
"""

from .core import Streamer, streamable
from .exceptions import DataError, PescadorError
from .maps import buffer_stream, cache, keras_tuples, tuples
from .mux import BaseMux, ChainMux, RoundRobinMux, ShuffledMux, StochasticMux
from .zmq_stream import ZMQStreamer

__version__ = "3.0.0"

__all__ = [
    "BaseMux",
    "ChainMux",
    "DataError",
    "PescadorError",
    "RoundRobinMux",
    "ShuffledMux",
    "StochasticMux",
    "Streamer",
    "ZMQStreamer",
    "buffer_stream",
    "cache",
    "keras_tuples",
    "streamable",
    "tuples",
]

"""pescador's muxes: prefetch's (weights as long-run shares, exact max_iter), with pescador's bookkeeping.

Each mux counts its running passes (`active`, and `with mux as running:` as for a
Streamer), exposes `rng` as pescador does (numpy's global random module for no
seed, else a RandomState), and `ChainMux([])` yields nothing, as in pescador.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import _mux
from .core import Activations

__all__ = ["BaseMux", "ChainMux", "RoundRobinMux", "ShuffledMux", "StochasticMux"]


class _Bookkeeping(Activations):
    """pescador's view of a mux: how many passes run, its random generator, its running policy."""

    _running: bool

    def _start_bookkeeping(self, random_state: Any) -> None:
        self.active_count_ = 0
        self._running = False
        if random_state is None:
            self.rng: Any = np.random
        elif isinstance(random_state, np.random.RandomState):
            self.rng = random_state
        else:
            self.rng = np.random.RandomState(random_state if isinstance(random_state, int) else None)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        twin = copy.copy(self)
        memo[id(self)] = twin
        for key, value in self.__dict__.items():
            setattr(twin, key, value if value is np.random else copy.deepcopy(value, memo))
        return twin

    @property
    def is_activated_copy(self) -> bool:
        return self._running

    def _activated_copy(self) -> Any:
        twin = copy.deepcopy(self)
        twin._running = True
        twin.active_count_ = 0
        return twin

    def _iterate(self, max_iter: int | None) -> Iterator[Any]:
        if max_iter == 0:
            return
        self._control = _mux.DriveControl(lambda n: n)
        self.active_count_ += 1
        try:
            yield from self._drive(_mux._open_in_process, max_iter, self._control)  # type: ignore[attr-defined]
        finally:
            self.active_count_ -= 1

    # pescador's view of the running policy: its streams, their current weights and samples drawn so far

    def _live_policy(self) -> Any:
        control = getattr(self, "_control", None)
        return None if control is None else control.policy

    @property
    def streams_(self) -> list[Any]:
        return list(self.streamers)

    @property
    def stream_weights_(self) -> np.ndarray:
        policy = self._live_policy()
        weights = getattr(policy, "weights", None)
        if weights is None:
            weights = getattr(self, "weights", np.ones(len(self.streamers)))
        weights = np.asarray(weights, dtype=float)
        total = weights.sum()
        return weights / total if total > 0 else weights

    @property
    def stream_counts_(self) -> np.ndarray:
        produced = getattr(self._live_policy(), "produced", None)
        return np.zeros(len(self.streamers), dtype=np.int64) if produced is None else np.asarray(produced)


BaseMux = _mux.BaseMux


class StochasticMux(_Bookkeeping, _mux.StochasticMux):
    def __init__(self, streamers: Any, n_active: Any, rate: Any, weights: Any = None, mode: str = "with_replacement",
                 prune_empty_streams: bool = True, dist: str = "binomial", random_state: Any = None) -> None:
        super().__init__(streamers, n_active, rate, weights=weights, mode=mode,
                         prune_empty_streams=prune_empty_streams, dist=dist, random_state=random_state)
        self._start_bookkeeping(random_state)


class ShuffledMux(_Bookkeeping, _mux.ShuffledMux):
    def __init__(self, streamers: Any, weights: Any = None, random_state: Any = None) -> None:
        super().__init__(streamers, weights=weights, random_state=random_state)
        self._start_bookkeeping(random_state)


class RoundRobinMux(_Bookkeeping, _mux.RoundRobinMux):
    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        super().__init__(streamers, mode=mode, random_state=random_state)
        self._start_bookkeeping(random_state)


class ChainMux(_Bookkeeping, _mux.ChainMux):
    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        self._empty = isinstance(streamers, (list, tuple)) and not streamers
        super().__init__(["placeholder"] if self._empty else streamers, mode=mode, random_state=random_state)
        if self._empty:
            self.streamers = []
        self._start_bookkeeping(random_state)

    def _iterate(self, max_iter: int | None) -> Iterator[Any]:
        if self._empty:
            return iter(())
        return super()._iterate(max_iter)

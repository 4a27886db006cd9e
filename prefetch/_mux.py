"""Muxes: streamers that interleave many streams, with pescador's semantics.

Each mux pairs a pure policy (`_policy`) walked by a `Walk`; `_drive` pulls rows from
child streams it opens through an `open_child` callback. Iterating a mux in process passes a
callback that iterates the child; the pool's mux process passes one that hands the
child to a worker. Both therefore walk the policy identically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from numbers import Integral, Real
from typing import Any

import numpy as np

from ._errors import ArgumentError, add_note, check_int
from ._policy import Activation, ChainPolicy, RoundRobinPolicy, ShuffledPolicy, StochasticPolicy
from ._streamer import Streamer
from ._walk import Walk

OpenChild = Callable[[Streamer, "int | None"], Iterator[Any]]


def check_random_state(random_state: Any, owner: str) -> Any:
    """Accept None, a non-negative int, a numpy Generator or RandomState."""
    if random_state is None or isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        return random_state
    if isinstance(random_state, Integral) and not isinstance(random_state, bool) and random_state >= 0:
        return int(random_state)
    raise ArgumentError(
        f"{owner}: random_state must be None, an int >= 0, a numpy Generator or RandomState; got {random_state!r}"
    )


def check_weights(weights: Any, n_streams: int, owner: str) -> np.ndarray:
    """A float copy of `weights` normalised to sum 1, or an ArgumentError saying what is wrong."""
    if weights is None:
        return np.full(n_streams, 1.0 / n_streams)
    try:
        w = np.array(weights, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{owner}: weights must be numbers, got {weights!r}") from exc
    w = np.atleast_1d(w)
    if w.ndim != 1 or len(w) != n_streams:
        raise ArgumentError(f"{owner}: weights has {w.size} entries, but there are {n_streams} streams")
    if not np.isfinite(w).all():
        raise ArgumentError(f"{owner}: weights must be finite, got {w.tolist()}")
    if (w < 0).any():
        raise ArgumentError(f"{owner}: weights must be >= 0, got negative entries at {np.flatnonzero(w < 0).tolist()}")
    if w.sum() <= 0:
        raise ArgumentError(f"{owner}: weights are all zero; at least one stream needs a positive weight")
    return w / w.sum()


def _check_choice(value: str, allowed: tuple[str, ...], name: str, owner: str) -> str:
    if value not in allowed:
        raise ArgumentError(f"{owner}: {name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


class BaseMux(Streamer):
    """A streamer whose samples come from several child streamers, chosen by a policy."""

    def __init__(self, streamers: Iterable[Any], random_state: Any = None) -> None:
        owner = type(self).__name__
        if callable(streamers) and not isinstance(streamers, Streamer):
            self.streamers: Any = streamers
        else:
            if not isinstance(streamers, Iterable):
                raise ArgumentError(f"{owner}: streamers must be an iterable of streamers, got {streamers!r}")
            self.streamers = [s if isinstance(s, Streamer) else Streamer(s) for s in streamers]
            if not self.streamers:
                raise ArgumentError(f"{owner}: streamers is empty; a mux needs at least one stream")
        self.random_state = check_random_state(random_state, owner)
        self.activations = 0

    def __repr__(self) -> str:
        count = len(self.streamers) if isinstance(self.streamers, list) else "generated"
        return f"{type(self).__name__}({count} streams)"

    @property
    def n_streams(self) -> int:
        return len(self.streamers)

    def _activation_rng(self) -> Any:
        """The generator for one activation: fresh entropy, a seed-derived one, or the caller's."""
        rs = self.random_state
        if rs is None:
            return np.random.default_rng()
        if isinstance(rs, int):
            self.activations += 1
            return np.random.default_rng(np.random.SeedSequence(rs, spawn_key=(self.activations - 1,)))
        return rs

    def _policy(self, rng: Any) -> Any:
        raise NotImplementedError

    def _child(self, key: Any) -> Streamer:
        return self.streamers[key] if isinstance(key, int) else key

    def _iterate(self, max_iter: int | None) -> Iterator[Any]:
        return self._drive(_open_in_process, max_iter)

    def _walk(self, max_iter: int | None, saving: bool = False, span: int = 1) -> Walk:
        """A new pass over this mux's policy, with a fresh activation generator (see Walk for `span`)."""
        return Walk(self._policy(self._activation_rng()), max_iter, saving, span)

    def _drive(self, open_child: OpenChild, max_iter: int | None,
               control: DriveControl | None = None) -> Iterator[Any]:
        """Walk the policy row by row, pulling each row from the child stream it chooses.

        `control` lets the pool see the policy (to reweight it) and cap the rows drawn
        ahead, so that a reweighting starts at an exact row.
        """
        walk = self._walk(max_iter)
        if control is not None:
            control.policy = walk.policy
        opened: dict[int, tuple[Iterator[Any], Any]] = {}

        def launch(activations: list[Activation]) -> None:
            for a in activations:
                opened[a.slot] = (open_child(self._child(a.child), a.budget), a.child)

        launch(walk.start())
        while (choices := walk.draw(None if control is None else control.cap)) is not None:
            exhausted = None
            delivered = 0
            for slot in choices.tolist():
                stream, key = opened[slot]
                try:
                    item = next(stream)
                except StopIteration:
                    exhausted = slot
                    break
                except Exception as exc:
                    add_note(exc, f"raised in stream {key!r} ({self._child(key)!r}) of {self!r}")
                    raise
                delivered += 1
                yield item
            ended, activations = walk.finish(delivered, exhausted)
            for slot in ended:
                del opened[slot]
            launch(activations)


class DriveControl:
    """The pool's handle on a running top-level mux: its policy, and a cap on rows drawn ahead."""

    def __init__(self, cap: Callable[[int], int]) -> None:
        self.policy: Any = None
        self.cap = cap


def _open_in_process(child: Streamer, budget: int | None) -> Iterator[Any]:
    return child._iterate(budget)


class StochasticMux(BaseMux):
    """Sample from `n_active` streams at a time, each for a random budget of about `rate` samples.

    `weights[i]` is the long-run share of samples from stream i (for streams that do
    not run out) in `with_replacement` and `single_active` modes, whatever `n_active`
    and `rate`. Modes: `with_replacement` (a stream may be active in several slots),
    `single_active` (at most once at a time), `exhaustive` (each stream once, never
    revisited). `dist` draws each budget: `constant`, `binomial` or `poisson`, all
    with mean `rate`; `rate=None` reads each stream until it ends.
    """

    MODES = ("with_replacement", "single_active", "exhaustive")
    DISTS = ("constant", "binomial", "poisson")

    def __init__(self, streamers: Iterable[Any], n_active: int, rate: float | None, weights: Any = None,
                 mode: str = "with_replacement", prune_empty_streams: bool = True, dist: str = "binomial",
                 random_state: Any = None) -> None:
        super().__init__(streamers, random_state)
        owner = "StochasticMux"
        if not isinstance(self.streamers, list):
            raise ArgumentError(f"{owner}: streamers must be a list of streamers, not a generator function")
        self.mode = _check_choice(mode, self.MODES, "mode", owner)
        self.dist = _check_choice(dist, self.DISTS, "dist", owner)
        n_active = check_int(n_active, 1, f"{owner}: n_active")
        if mode != "with_replacement" and n_active > self.n_streams:
            raise ArgumentError(
                f"{owner}: n_active={n_active} exceeds the {self.n_streams} streams, which mode={mode!r} forbids "
                "(a stream can be active only once); lower n_active or use mode='with_replacement'"
            )
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, Real)
                                 or not np.isfinite(rate) or rate < 1):
            raise ArgumentError(
                f"{owner}: rate must be None or a number >= 1 (the mean number of samples per activation, "
                f"and every activation yields at least one); got {rate!r}"
            )
        self.n_active = int(n_active)
        self.rate = rate
        self.weights = check_weights(weights, self.n_streams, owner)
        self.prune_empty_streams = bool(prune_empty_streams)

    def _policy(self, rng: Any) -> StochasticPolicy:
        return StochasticPolicy(self.weights, self.n_active, self.rate, self.mode,
                                self.prune_empty_streams, self.dist, rng)


class ShuffledMux(BaseMux):
    """Interleave every stream at once, each drawn in proportion to its weight and restarted when it ends.

    A stream that yields nothing when restarted is dropped; the mux ends when every
    stream is dropped.
    """

    def __init__(self, streamers: Iterable[Any], weights: Any = None, random_state: Any = None) -> None:
        super().__init__(streamers, random_state)
        if not isinstance(self.streamers, list):
            raise ArgumentError("ShuffledMux: streamers must be a list of streamers, not a generator function")
        self.weights = check_weights(weights, self.n_streams, "ShuffledMux")

    def _policy(self, rng: Any) -> ShuffledPolicy:
        return ShuffledPolicy(self.weights, rng)


class RoundRobinMux(BaseMux):
    """One sample from each stream in turn.

    Modes: `exhaustive` ends when every stream has ended; `cycle` restarts them all
    then; `permuted_cycle` restarts them in a new random order.
    """

    MODES = ("exhaustive", "cycle", "permuted_cycle")

    def __init__(self, streamers: Iterable[Any], mode: str = "exhaustive", random_state: Any = None) -> None:
        super().__init__(streamers, random_state)
        if not isinstance(self.streamers, list):
            raise ArgumentError("RoundRobinMux: streamers must be a list of streamers, not a generator function")
        self.mode = _check_choice(mode, self.MODES, "mode", "RoundRobinMux")

    def _policy(self, rng: Any) -> RoundRobinPolicy:
        return RoundRobinPolicy(self.n_streams, self.mode, rng)


class ChainMux(BaseMux):
    """Each stream to its end, then the next, as `itertools.chain`.

    `streamers` is a list, or a generator function yielding streamers (called again
    at every pass, so it may be endless). Modes: `exhaustive` ends after the last
    stream; `cycle` starts over from the first.
    """

    MODES = ("exhaustive", "cycle")

    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        super().__init__(streamers, random_state)
        self.mode = _check_choice(mode, self.MODES, "mode", "ChainMux")

    def _children(self) -> Iterator[Any]:
        if isinstance(self.streamers, list):
            return iter(range(len(self.streamers)))
        return (s if isinstance(s, Streamer) else Streamer(s) for s in self.streamers())

    def _policy(self, rng: Any) -> ChainPolicy:
        return ChainPolicy(self._children, self.mode)

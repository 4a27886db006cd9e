"""Mux policies: which active stream feeds the next samples.

A policy is pure: a function of its random generator and of the exhaustion events
it is told about, with no knowledge of generators, processes or sockets. The
in-process muxes and the pool's mux process drive the same policy objects, so both
produce the same sequence of stream choices for the same seed.

Protocol, as a driver uses it:
  `start()` gives the first activations; `choose(n)` gives up to n slot indices,
  cut right after the first slot whose budget runs out; `advance(choices)` records
  the rows actually delivered and returns the slots whose budget ran out;
  `ended(slot)` says the stream in `slot` ended (budget or exhaustion) and returns
  the activations that replace it. An activation opens child `child` of the mux
  with at most `budget` samples (None: until it ends). `live()` maps each active
  slot to its child, and `slots` says how many slots there are.

`choose` changes nothing but the policy's generator `rng` (and caches), so a driver
can end a draw early by putting `rng` back and drawing fewer rows (see Walk's `cut`).
A policy that is `steady` (no budgets: only an exhausted stream changes what it
draws) may be drawn many blocks at once (see Walk's spans).

State: `get_state()` is a dict of everything the policy knows, its RNG included,
that later steps never change (cheap: the planner takes one per block); `jsonable()`
turns it into plain data; `set_state()` takes either and, on a policy built with the
same arguments, continues exactly where that one stood. The format may change between
prefetch versions (a pool's state carries its format number).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import EmptyStreamError, MuxStarvedError

Rng = Any  # np.random.Generator or np.random.RandomState: both offer random/choice/poisson/binomial


@dataclass(frozen=True)
class Activation:
    """Open child `child` in active slot `slot` for at most `budget` samples (None: no limit)."""

    slot: int
    child: Any
    budget: int | None


def _rng_raw(rng: Rng) -> Any:
    if isinstance(rng, np.random.RandomState):
        return rng.get_state(legacy=False)
    return rng.bit_generator.state


def _set_rng(rng: Rng, state: Any) -> None:
    if isinstance(state, list):
        name, value, inc, has_uint32, uinteger = state
        state = {"bit_generator": name, "state": {"state": int(value, 16), "inc": int(inc, 16)},
                 "has_uint32": has_uint32, "uinteger": uinteger}
    elif isinstance(state, str):
        state = json.loads(state)
    if isinstance(rng, np.random.RandomState):
        state["state"]["key"] = np.asarray(state["state"]["key"], dtype=np.uint32)
        rng.set_state(state)
    else:
        rng.bit_generator.state = state


def _jsonable_rng(state: dict[str, Any]) -> Any:
    """A generator's state, JSON- and msgpack-safe (its 128-bit integers as hex text)."""
    if state["bit_generator"] in ("PCG64", "PCG64DXSM"):
        inner = state["state"]
        return [state["bit_generator"], f"{inner['state']:x}", f"{inner['inc']:x}", state["has_uint32"],
                state["uinteger"]]
    return json.dumps(state, default=lambda a: a.tolist())


def jsonable(state: Any) -> Any:
    """A policy state (from get_state, which copies cheaply) as plain JSON- and msgpack-safe data.

    Boolean arrays become strings of 0s and 1s, other arrays lists, generator states
    compact text. set_state takes either form.
    """
    if isinstance(state, dict):
        if "bit_generator" in state:
            return _jsonable_rng(state)
        return {k: jsonable(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return "".join("01"[b] for b in state.tolist()) if state.dtype == np.bool_ else state.tolist()
    if isinstance(state, (list, tuple)):
        return [jsonable(v) for v in state]
    return state


def _arrays_state(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Copies of the named arrays and the generator's state."""
    state: dict[str, Any] = {name: getattr(obj, name).copy() for name in names}
    state["rng"] = _rng_raw(obj.rng)
    return state


def _array(value: Any, dtype: Any) -> np.ndarray:
    """An array of a state, from get_state or from jsonable (booleans as a string of 0s and 1s)."""
    if isinstance(value, str):
        value = [c == "1" for c in value]
    return np.array(value, dtype=dtype)


def _set_arrays_state(obj: Any, names: tuple[str, ...], state: dict[str, Any]) -> None:
    for name in names:
        setattr(obj, name, _array(state[name], getattr(obj, name).dtype))
    _set_rng(obj.rng, state["rng"])


def _pick(rng: Rng, mass: np.ndarray) -> int:
    """One index drawn with probability proportional to `mass` (non-negative, not all zero)."""
    return _pick_by_sum(rng, np.cumsum(mass))


def _pick_by_sum(rng: Rng, cum: np.ndarray) -> int:
    """As `_pick`, given the running sum of the mass."""
    return int(min(cum.searchsorted(rng.random() * cum[-1], side="right"), len(cum) - 1))


def _draw_slots(rng: Rng, cum: np.ndarray, n: int) -> np.ndarray:
    """n slot indices drawn independently with probability proportional to a mass whose running sum is `cum`."""
    picks = cum.searchsorted(rng.random(n) * cum[-1], side="right")
    return np.minimum(picks, len(cum) - 1, out=picks)


CUT_BY_HAND = 64
"""Rows `_cut_at_budget` walks in Python before it asks numpy whether the rest exhausts any budget."""


def _cut_at_budget(choices: np.ndarray, budget: list[float]) -> np.ndarray:
    """The prefix of `choices` that ends at the first row exhausting some slot's budget (inf: none).

    A walk over the rows in Python, which stops at that row: with budgets about as
    long as a block it stops early (mean budget 64 over 16 slots: about 63 rows in,
    27 us here, against 48 for counting every slot with numpy first). Past
    CUT_BY_HAND rows, one bincount says whether the rest exhausts any budget at all:
    where none does (streams that end long before their budget, whose fresh budgets
    outlast the block) the walk would go over every row (38 against 22 us a block).
    Rows fewer than every budget cannot exhaust one.
    """
    if len(choices) < min(budget):
        return choices
    left = list(budget)
    rows = choices.tolist()
    for row, slot in enumerate(rows[:CUT_BY_HAND]):
        left[slot] -= 1
        if left[slot] <= 0:
            return choices[:row + 1]
    if len(rows) <= CUT_BY_HAND or (np.bincount(choices[CUT_BY_HAND:], minlength=len(left)) < left).all():
        return choices
    for row, slot in enumerate(rows[CUT_BY_HAND:], CUT_BY_HAND):
        left[slot] -= 1
        if left[slot] <= 0:
            return choices[:row + 1]
    return choices


class StochasticPolicy:
    """StochasticMux's policy: `n_active` slots, each holding a stream for a random budget.

    Streams are activated with probability proportional to their weight, and rows are
    drawn from the active slots in proportion to their stream's weight (shared among
    copies of one stream). Because every budget has mean `rate` whatever the stream,
    the long-run share of a stream that never runs out equals its weight. In
    `single_active` mode, where an active stream cannot be chosen again, activations
    favour streams whose activation count lags their weight so that this still holds.

    The slots' state (child, budget, produced) is kept in Python lists: a handful of
    slots costs less that way than in numpy calls, with the same float operations.
    The streams' arrays are shared with the states get_state gave out, and copied
    before the next change (an activation, a pruned stream), so a state costs no copies.
    """

    def __init__(self, weights: np.ndarray, n_active: int, rate: float | None, mode: str,
                 prune_empty_streams: bool, dist: str, rng: Rng) -> None:
        n = len(weights)
        self.weights = np.array(weights, dtype=float)
        self.n_active, self.rate, self.mode, self.dist = n_active, rate, mode, dist
        self.slots = n_active
        self.prune_empty_streams = prune_empty_streams
        self.rng = rng
        self.child: list[int] = [-1] * n_active
        self.budget: list[float] = [0.0] * n_active
        self.produced: list[int] = [0] * n_active
        self.pruned = np.zeros(n, dtype=bool)
        self.visited = np.zeros(n, dtype=bool)
        self.activations = np.zeros(n, dtype=np.int64)
        self.empty_since_sample: set[int] = set()
        self._cum: np.ndarray | None = None
        """Cached running sum of `_slot_mass`: it changes only with the active streams or the weights."""
        self._weights: list[float] | None = None
        """Cached `weights` as Python floats."""
        self._usable: np.ndarray | None = None
        """Cached mask of streams with weight that were not pruned."""
        self._activation_cum: np.ndarray | None = None
        """Cached running sum of the usable streams' weights: what a with_replacement activation draws from."""
        self._shared = False
        """Whether a state given out holds the streams' arrays (pruned, visited, activations): copy before changing."""

    def _changed(self) -> None:
        self._cum = self._usable = self._weights = self._activation_cum = None

    @property
    def predictable(self) -> bool:
        """Whether a copy can foresee the next activations: every one ends by its budget, not only by exhaustion."""
        return self.rate is not None

    @property
    def steady(self) -> bool:
        """Whether choices may be drawn many blocks at once (see Walk): without budgets, only an exhausted
        stream changes what is drawn."""
        return self.rate is None

    def set_weights(self, weights: np.ndarray) -> None:
        self.weights = np.array(weights, dtype=float)
        self._changed()

    def get_state(self) -> dict[str, Any]:
        self._shared = True
        return {"weights": self.weights, "child": list(self.child),
                "budget": [None if b == math.inf else b for b in self.budget], "produced": list(self.produced),
                "pruned": self.pruned, "visited": self.visited, "activations": self.activations,
                "rng": _rng_raw(self.rng), "empty_since_sample": sorted(self.empty_since_sample)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.weights = _array(state["weights"], float)
        self.child = [int(c) for c in state["child"]]
        self.budget = [math.inf if b is None else float(b) for b in state["budget"]]
        self.produced = [int(p) for p in state["produced"]]
        self.pruned, self.visited = _array(state["pruned"], bool), _array(state["visited"], bool)
        self.activations = _array(state["activations"], np.int64)
        _set_rng(self.rng, state["rng"])
        self.empty_since_sample = set(state["empty_since_sample"])
        self._shared = False
        self._changed()

    def _own_streams(self) -> None:
        """Copy the streams' arrays before a change if a state holds them."""
        if self._shared:
            self.pruned, self.visited = self.pruned.copy(), self.visited.copy()
            self.activations = self.activations.copy()
            self._shared = False

    def live(self) -> dict[int, Any]:
        return {s: c for s, c in enumerate(self.child) if c >= 0}

    def start(self) -> list[Activation]:
        started = [self._activate(slot, initial=True) for slot in range(self.n_active)]
        return [a for a in started if a is not None]

    def _slot_mass(self) -> list[float]:
        """Each active slot's share of the draws: its stream's weight shared among its copies (0 for an empty slot).

        Worked out on Python floats: a handful of slots, recomputed at every
        activation, costs less that way than in numpy calls, with the same values
        (one IEEE division per slot).
        """
        if self._weights is None:
            self._weights = self.weights.tolist()
        weights, child = self._weights, self.child
        copies: dict[int, int] = {}
        for kid in child:
            if kid >= 0:
                copies[kid] = copies.get(kid, 0) + 1
        return [weights[kid] / copies[kid] if kid >= 0 else 0.0 for kid in child]

    def _slot_cum(self) -> np.ndarray:
        """The running sum of `_slot_mass`, in slot order as numpy's cumsum, kept until the active streams change."""
        if self._cum is None:
            self._cum = np.array(list(itertools.accumulate(self._slot_mass())))
        return self._cum

    def choose(self, n: int) -> np.ndarray:
        cum = self._slot_cum()
        if not cum[-1] > 0:
            self._check_starved()
            return np.empty(0, dtype=np.int64)
        choices = _draw_slots(self.rng, cum, n)
        return choices if self.rate is None else _cut_at_budget(choices, self.budget)

    def advance(self, choices: np.ndarray) -> list[int]:
        if len(choices) == 0:
            return []
        counts = np.bincount(choices, minlength=self.n_active).tolist()
        self.produced = [p + c for p, c in zip(self.produced, counts, strict=True)]
        self.empty_since_sample.clear()
        if self.rate is None:  # every budget is unlimited
            return []
        self.budget = budget = [b - c for b, c in zip(self.budget, counts, strict=True)]
        return [slot for slot, kid in enumerate(self.child) if kid >= 0 and budget[slot] <= 0]

    def ended(self, slot: int) -> list[Activation]:
        kid = self.child[slot]
        if self.produced[slot] == 0:
            if self.prune_empty_streams:
                self._own_streams()
                self.pruned[kid] = True
                self._usable = self._activation_cum = None
            else:
                self.empty_since_sample.add(kid)
                hopeful = np.flatnonzero((self.weights > 0) & ~self.pruned)
                if set(hopeful.tolist()) <= self.empty_since_sample:
                    raise EmptyStreamError(
                        f"every stream with positive weight ({hopeful.tolist()}) yielded nothing since the "
                        "last sample and prune_empty_streams=False, so the mux would restart them forever"
                    )
        self.child[slot], self.budget[slot] = -1, math.inf
        self._cum = None
        activation = self._activate(slot)
        return [] if activation is None else [activation]

    def _eligible(self, initial: bool) -> np.ndarray:
        if self._usable is None:
            self._usable = (self.weights > 0) & ~self.pruned
        ok = self._usable
        if self.mode == "exhaustive":
            ok = ok & ~self.visited
        if self.mode == "single_active" or initial:
            active = np.zeros_like(ok)
            active[[kid for kid in self.child if kid >= 0]] = True
            if self.mode == "single_active" or (ok & ~active).any():
                ok = ok & ~active
        return ok

    def _activate(self, slot: int, initial: bool = False) -> Activation | None:
        if self.mode == "with_replacement" and not initial:
            kid = self._pick_with_replacement()
            if kid is None:
                return None
        else:
            ok = self._eligible(initial)
            if not ok.any():
                return None
            mass = np.where(ok, self.weights, 0.0)
            if self.mode == "single_active":
                live = (self.weights > 0) & ~self.pruned
                share = np.where(live, self.weights, 0.0) / self.weights[live].sum()
                lag = np.where(ok, share * (self.activations.sum() + 1) - self.activations, 0.0)
                if (lag > 0).any():
                    mass = np.maximum(lag, 0.0)
            kid = _pick(self.rng, mass)
        budget = self._draw_budget(kid, slot)
        self.child[slot], self.produced[slot] = kid, 0
        self.budget[slot] = math.inf if budget is None else float(budget)
        self._own_streams()
        self.visited[kid] = True
        self.activations[kid] += 1
        self._cum = None
        return Activation(slot, kid, budget)

    def _pick_with_replacement(self) -> int | None:
        """As `_pick` over the usable streams' weights (None if there are none), their running sum kept until
        the weights or the pruned streams change: in this mode every activation draws from the same mass."""
        if self._activation_cum is None:
            usable = self._eligible(False)
            if not usable.any():
                return None
            self._activation_cum = np.cumsum(np.where(usable, self.weights, 0.0))
        return _pick_by_sum(self.rng, self._activation_cum)

    def _draw_budget(self, kid: int, slot: int) -> int | None:
        rate = self.rate
        if rate is None:
            return None
        if self.dist == "constant":
            return max(1, round(rate))
        if self.dist == "binomial":
            # The slot is empty while its next stream is drawn. numpy's pairwise sum, as np.sum of the list
            # gives, without np.sum's dispatch (a third of the cost).
            others = np.add.reduce(np.array(self._slot_mass()))
            copies = 1 + self.child.count(kid) - int(self.child[slot] == kid)
            mine = self._weights[kid] / copies
            p = mine / (others + mine)
            if p <= 0.9999:
                return 1 + int(self.rng.binomial(round((rate - 1) / (1 - p)), 1 - p))
        return 1 + int(self.rng.poisson(rate - 1))

    def _check_starved(self) -> None:
        waiting = (self.weights == 0) & ~self.pruned
        if self.mode == "exhaustive":
            waiting &= ~self.visited
        if waiting.any():
            raise MuxStarvedError(
                f"streams {np.flatnonzero(waiting).tolist()} still have data but weight 0, and no other "
                "stream is left; give them weight or leave them out of the mux"
            )


class ShuffledPolicy:
    """ShuffledMux's policy: every stream always active, restarted when it ends, drawn by weight."""

    def __init__(self, weights: np.ndarray, rng: Rng) -> None:
        self.weights = np.array(weights, dtype=float)
        self.slots = len(self.weights)
        self.user_zero = self.weights == 0
        self.rng = rng
        self.produced = np.zeros(len(weights), dtype=np.int64)

    STATE = ("weights", "user_zero", "produced")
    steady = True
    """Only an exhausted stream changes what is drawn (see Walk)."""

    def set_weights(self, weights: np.ndarray) -> None:
        pruned = (self.weights == 0) & ~self.user_zero
        self.weights = np.where(pruned, 0.0, np.asarray(weights, dtype=float))
        self.user_zero = np.asarray(weights) == 0

    def get_state(self) -> dict[str, Any]:
        return _arrays_state(self, self.STATE)

    def set_state(self, state: dict[str, Any]) -> None:
        _set_arrays_state(self, self.STATE, state)

    def live(self) -> dict[int, Any]:
        pruned = (self.weights == 0) & ~self.user_zero
        return {s: s for s in np.flatnonzero(~pruned).tolist()}

    def start(self) -> list[Activation]:
        return [Activation(s, s, None) for s in range(len(self.weights))]

    def choose(self, n: int) -> np.ndarray:
        if not self.weights.any():
            if self.user_zero.any():
                raise MuxStarvedError(
                    f"streams {np.flatnonzero(self.user_zero).tolist()} have weight 0 and every other "
                    "stream is empty; give them weight or leave them out of the mux"
                )
            return np.empty(0, dtype=np.int64)
        return _draw_slots(self.rng, np.cumsum(self.weights), n)

    def advance(self, choices: np.ndarray) -> list[int]:
        self.produced += np.bincount(choices, minlength=len(self.weights))
        return []

    def ended(self, slot: int) -> list[Activation]:
        if self.produced[slot] == 0:
            self.weights[slot] = 0.0
            return []
        self.produced[slot] = 0
        return [Activation(slot, slot, None)]


class RoundRobinPolicy:
    """RoundRobinMux's policy: one sample from each live stream in turn."""

    def __init__(self, n_streams: int, mode: str, rng: Rng) -> None:
        self.n, self.mode, self.rng = n_streams, mode, rng
        self.slots = n_streams
        self.alive = np.zeros(n_streams, dtype=bool)
        self.order = np.arange(n_streams)
        self.next_slot = 0
        self.round_produced = 0
        self._turns: tuple[np.ndarray, np.ndarray] | None = None
        """Cached (live slots, those slots repeated, read-only): rows of a block are a slice of the repeat."""

    def get_state(self) -> dict[str, Any]:
        state = _arrays_state(self, ("alive", "order"))
        state.update(next_slot=self.next_slot, round_produced=self.round_produced)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        _set_arrays_state(self, ("alive", "order"), state)
        self.next_slot, self.round_produced = state["next_slot"], state["round_produced"]
        self._turns = None

    def live(self) -> dict[int, Any]:
        return {s: int(self.order[s]) for s in np.flatnonzero(self.alive).tolist()}

    def start(self) -> list[Activation]:
        self.alive[:] = True
        self.next_slot = 0
        self.round_produced = 0
        self._turns = None
        return [Activation(s, int(self.order[s]), None) for s in range(self.n)]

    def choose(self, n: int) -> np.ndarray:
        """The live slots in turn from `next_slot` on, n of them: a slice of the live slots repeated."""
        turns = self._turns
        if turns is None or len(turns[1]) < len(turns[0]) + n:
            slots = np.flatnonzero(self.alive)
            repeated = np.tile(slots, n // max(1, len(slots)) + 2)
            repeated.setflags(write=False)
            self._turns = turns = slots, repeated
        slots, repeated = turns
        if len(slots) == 0:
            return np.empty(0, dtype=np.int64)
        first = int(slots.searchsorted(self.next_slot)) % len(slots)
        return repeated[first:first + n]

    def advance(self, choices: np.ndarray) -> list[int]:
        if len(choices):
            self.next_slot = (int(choices[-1]) + 1) % self.n
            self.round_produced += len(choices)
        return []

    def ended(self, slot: int) -> list[Activation]:
        self.alive[slot] = False
        self._turns = None
        if self.alive.any() or self.mode == "exhaustive":
            return []
        if self.round_produced == 0:
            raise EmptyStreamError(f"RoundRobinMux(mode={self.mode!r}): every stream yielded nothing in a whole round")
        if self.mode == "permuted_cycle":
            self.order = self.rng.permutation(self.n)
        return self.start()


class ChainPolicy:
    """ChainMux's policy: one stream at a time, each to its end, in the order given."""

    def __init__(self, children: Callable[[], Iterator[Any]], mode: str) -> None:
        self.children, self.mode = children, mode
        self.slots = 1
        self.pass_children: Iterator[Any] = iter(())
        self.pass_produced = 0
        self.taken = 0
        self.current: Any = None
        self.active = False

    def get_state(self) -> dict[str, Any]:
        return {"taken": self.taken, "pass_produced": self.pass_produced, "active": self.active}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restart the pass's children and move past the `taken` already opened (generated ones are made again)."""
        self.pass_children = self.children()
        self.taken, self.current = 0, None
        for _ in range(state["taken"]):
            self.current = next(self.pass_children)
            self.taken += 1
        self.pass_produced, self.active = state["pass_produced"], state["active"]

    def live(self) -> dict[int, Any]:
        return {0: self.current} if self.active else {}

    def start(self) -> list[Activation]:
        self.pass_children = self.children()
        self.pass_produced = 0
        self.taken = 0
        return self._next()

    def _next(self) -> list[Activation]:
        for child in self.pass_children:
            self.active, self.current = True, child
            self.taken += 1
            return [Activation(0, child, None)]
        self.active, self.current = False, None
        if self.mode == "cycle":
            if self.pass_produced == 0:
                raise EmptyStreamError("ChainMux(mode='cycle'): a whole pass over the streams yielded nothing")
            return self.start()
        return []

    def choose(self, n: int) -> np.ndarray:
        return np.zeros(n if self.active else 0, dtype=np.int64)

    def advance(self, choices: np.ndarray) -> list[int]:
        self.pass_produced += len(choices)
        return []

    def ended(self, slot: int) -> list[Activation]:
        return self._next()

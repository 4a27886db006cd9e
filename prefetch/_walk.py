"""Walk: one pass of a mux policy, a block of stream choices at a time, as a state machine.

The in-process muxes and the pool's planner drive the same Walk, so both make the
same choices for the same seed. Being an object rather than a generator, a walk
can be saved (`get_state`) and restored (`set_state`).

    start() ──> activations
    loop:  draw(cap) ──> choices of the next rows (None: the pass is over)
           finish(delivered, exhausted) ──> (ended slots, activations replacing them)

Drawing ahead: `extend()` walks the policy one block further than the driver has
got, as if every row of it will be delivered (or up to where the driver foresees a
stream running out, if it says so), and keeps the block in a journal.
`draw` then replays journal blocks instead of asking the policy again, so the
planner's look-ahead (which opens foreseen activations early) costs no second
walk. A block that does not play out as foreseen (a stream ran out early) sends
the policy back to where that block started, drops the journal, and is walked
again for real; `rewind()` drops the blocks past the current one (a reweighting).

Spans: a policy whose draws never change between blocks (`steady`: no budgets, so
nothing happens at a block's end) may be asked for up to `span` blocks at once, with
the same choices (a generator draws the same numbers in one call as in several).
Where a span ends early (a stream ran out, or `cut` for a reweighting), the generator
is put back where the blocks up to there would have left it, so the choices after it
are those of blocks drawn one at a time. A span costs a driver one block's Python
work for several blocks' rows; it grows from one block while draws play out whole,
and falls back to one at an early end, so streams that end often cost what they did.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import PrefetchError
from ._policy import Activation, _rng_raw, _set_rng

BLOCK = 256
"""Rows of stream choices drawn at a time; fixed so that every driver draws the same."""

SPAN = 8
"""Blocks a driver that can afford a long block (the pool's planner) draws at once from a steady policy."""


@dataclass
class Block:
    """A block drawn ahead: what a replay gives back, and where a rewind goes back to."""

    before: dict[str, Any]
    """The policy's state before the block was drawn."""
    remaining: int | None
    """The walk's rows left before the block."""
    size: int
    """Rows asked of the policy (the choices may be fewer: cut after a budget runs out)."""
    choices: np.ndarray
    ended: list[int]
    activations: list[Activation]
    delivered: int
    """Rows of the choices the block is foreseen to deliver (all of them, unless a stream runs out first)."""
    exhausted: int | None
    """The slot foreseen to run out at row `delivered`, if any."""
    opened: list[Any] = field(default_factory=list)
    """What the driver opened ahead for the block's activations (the planner's foreseen instances)."""


class Walk:
    """A pass over a policy. `max_iter` caps the rows it yields (None: until the policy ends)."""

    def __init__(self, policy: Any, max_iter: int | None, saving: bool = False, span: int = 1) -> None:
        self.policy = policy
        self.remaining = max_iter
        self.most = BLOCK * (span if getattr(policy, "steady", False) else 1)
        """Most rows drawn at a time: `span` blocks for a steady policy."""
        self.rows = BLOCK
        """Rows the next draw asks for: doubled after a draw played out whole, up to `most`; one block after one
        that ended early (streams that end often would waste most of a span, and put the generator back)."""
        self.saving = saving
        """Whether each draw keeps the policy's state before it, for get_state (and its generator's, for `cut`)."""
        self.choices: np.ndarray | None = None
        self.block = 0
        self.drawn_from: dict[str, Any] | None = None
        self.rng = getattr(policy, "rng", None)
        """The policy's generator (a ChainMux's policy has none): what its `choose` changes."""
        self.drawn_rng: Any = None
        """The generator's state before the current draw, to end it early (kept for spans, and in saving walks)."""
        self.ahead: deque[Block] = deque()
        """The journal: blocks drawn ahead, the current one first while it is replayed; the policy stands after them."""
        self.ahead_rows = 0
        self.replaying = False
        self.foreseen: Block | None = None
        """The block the last finish() completed, when it played out as drawn ahead."""
        self.rewinds = 0
        """How many times the journal lost blocks it had drawn ahead (for drivers that count what they opened)."""
        self.saved: dict[str, Any] | None = None
        """The policy's state, taken since the policy last changed (a snapshot between blocks, then the next draw)."""

    def start(self) -> list[Activation]:
        self.saved = None
        return self.policy.start()

    def _size(self) -> int:
        return self.rows if self.remaining is None else min(self.rows, self.remaining)

    def draw(self, cap: Callable[[int], int] | None = None) -> np.ndarray | None:
        """The active slot of each of the next rows (cut after a budget runs out); None when the pass is over.

        A block from the journal comes back as it was drawn: a driver whose `cap`
        could cut it rewinds first (see `rewind`).
        """
        if self.ahead:
            block = self.ahead[0]
            self.choices, self.block, self.drawn_from, self.replaying = block.choices, block.size, block.before, True
            return block.choices
        n = self._size()
        if n <= 0:
            return None
        if cap is not None:
            n = cap(n)
        if self.saving:
            self.drawn_from = self._policy_state()
        if self.rng is not None and (self.saving or n > BLOCK):
            self.drawn_rng = _rng_raw(self.rng)
        self.saved = None
        choices = self.policy.choose(n)
        if len(choices) == 0:
            return None
        self.choices, self.block = choices, n
        return choices

    def finish(self, delivered: int, exhausted: int | None) -> tuple[list[int], list[Activation]]:
        """`delivered` rows of the block were taken; the stream in slot `exhausted` ran out at the next row.

        Returns the slots that ended and the activations that replace them, in order.
        """
        choices, self.choices = self.choices, None
        self.foreseen = None
        if delivered < len(choices):
            self.rows = BLOCK
            if (delivered // BLOCK + 1) * BLOCK < len(choices):
                # A span ended early: the generator goes where the blocks through row `delivered` leave it.
                self._redraw((delivered // BLOCK + 1) * BLOCK)
        else:
            self.rows = min(2 * self.rows, self.most)
        if self.replaying:
            self.replaying = False
            block = self.ahead.popleft()
            self.ahead_rows -= block.delivered
            if delivered == block.delivered and exhausted == block.exhausted:
                self.foreseen = block
                return block.ended, block.activations
            self._go_back(block, keep=0)
            self.policy.choose(block.size)
        return self._advance(choices, delivered, exhausted)

    def _advance(self, choices: np.ndarray, delivered: int, exhausted: int | None
                 ) -> tuple[list[int], list[Activation]]:
        self.saved = None
        if self.remaining is not None:
            self.remaining -= delivered
        ended, activations = [], []
        for slot in self.policy.advance(choices[:delivered]):
            ended.append(slot)
            activations += self.policy.ended(slot)
        if exhausted is not None:
            ended.append(exhausted)
            activations += self.policy.ended(exhausted)
        return ended, activations

    def extend(self, left: Callable[[int], float] | None = None) -> Block | None:
        """Draw one more block ahead, as if all its rows will be delivered; None if none can be drawn ahead now.

        `left(slot)`, if given, is how many more samples the driver foresees the slot's
        stream making: the block then ends where one runs out, as `finish` would be told.
        None also when the pass would end there, or the policy would raise there
        (the driver meets the same end, or error, when it gets there for real).
        """
        if self.choices is not None and not self.replaying:
            return None
        n = self._size()
        if n <= 0:
            return None
        before, remaining = self._policy_state(), self.remaining
        self.saved = None
        try:
            choices = self.policy.choose(n)
            if len(choices) == 0:
                return None
            delivered, exhausted = len(choices), None
            if left is not None:
                row = _first_short(choices, left)
                if row is not None:
                    delivered, exhausted = row, int(choices[row])
            ended, activations = self._advance(choices, delivered, exhausted)
        except PrefetchError:
            self.policy.set_state(before)
            self.remaining = remaining
            return None
        block = Block(before, remaining, n, choices, ended, activations, delivered, exhausted)
        self.ahead.append(block)
        self.ahead_rows += delivered
        return block

    def cut(self, rows: int) -> None:
        """End the current block after `rows` rows, as if it had been drawn capped there: a reweighting starts there.

        A driver caps every draw at a reweighting it knows of; this is for new weights
        that arrive while a block drawn before them reaches past their first row (a
        span, or a block that began in the middle of a batch). A saving walk only.
        """
        if self.choices is not None and not self.replaying and rows < len(self.choices):
            self.choices, self.block = self._redraw(rows), rows

    def _redraw(self, rows: int) -> np.ndarray:
        """Put the generator where it stood before the current draw, and draw its first `rows` rows again (a mux
        policy's `choose` changes nothing else)."""
        _set_rng(self.rng, self.drawn_rng)
        self.saved = None
        return self.policy.choose(rows)

    def rewind(self) -> None:
        """Drop the blocks drawn ahead past the current one; the policy goes back to where they began."""
        keep = 1 if self.replaying else 0
        if len(self.ahead) > keep:
            self._go_back(self.ahead[keep], keep)

    def _go_back(self, block: Block, keep: int) -> None:
        """Put the policy where it stood before `block`; the journal keeps only its first `keep` blocks."""
        self.policy.set_state(block.before)
        self.saved = block.before
        self.remaining = block.remaining
        self.rewinds += 1
        while len(self.ahead) > keep:
            self.ahead_rows -= self.ahead.pop().delivered

    @property
    def foreseen_end(self) -> tuple[int, int | None]:
        """(rows, slot running out there) of the current block, as drawn ahead; (all rows, None) otherwise."""
        if self.replaying:
            block = self.ahead[0]
            return block.delivered, block.exhausted
        return len(self.choices), None

    def get_state(self) -> dict[str, Any]:
        """Where the walk stands: the policy before the current block was drawn, and that block's size."""
        if self.choices is not None:
            remaining = self.ahead[0].remaining if self.replaying else self.remaining
            return {"policy": self.drawn_from, "block": self.block, "remaining": remaining}
        if self.ahead:
            return {"policy": self.ahead[0].before, "block": None, "remaining": self.ahead[0].remaining}
        return {"policy": self._policy_state(), "block": None, "remaining": self.remaining}

    def _policy_state(self) -> dict[str, Any]:
        if self.saved is None:
            self.saved = self.policy.get_state()
        return self.saved

    def set_weights(self, weights: np.ndarray) -> None:
        """Reweight the policy where it stands (drivers rewind first if blocks were drawn ahead)."""
        self.policy.set_weights(weights)
        self.saved = None

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a get_state of a walk over the same mux: the current block is drawn again."""
        self.ahead.clear()
        self.ahead_rows, self.replaying, self.foreseen = 0, False, None
        self.rewinds += 1
        self.policy.set_state(state["policy"])
        self.saved = None
        self.remaining = state["remaining"]
        self.choices = None
        if state["block"] is not None:
            self.drawn_from = state["policy"]
            if self.rng is not None:
                self.drawn_rng = _rng_raw(self.rng)
            self.choices, self.block = self.policy.choose(state["block"]), state["block"]


def _first_short(choices: np.ndarray, left: Callable[[int], float]) -> int | None:
    """The first row whose slot has no sample left (as `left` foresees), or None."""
    remaining: dict[int, float] = {}
    for row, slot in enumerate(choices.tolist()):
        have = remaining.get(slot)
        if have is None:
            have = left(slot)
        if have <= 0:
            return row
        remaining[slot] = have - 1
    return None

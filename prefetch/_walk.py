"""Walk: one pass of a mux policy, a block of stream choices at a time, as a state machine.

The in-process muxes and the pool's planner drive the same Walk, so both make the
same choices for the same seed. Being an object rather than a generator, a walk
can be saved (`get_state`), restored (`set_state`) and copied (the planner's
look-ahead runs a copy ahead of the real one to open activations early).

    start() ──> activations
    loop:  draw(cap) ──> choices of the next rows (None: the pass is over)
           finish(delivered, exhausted) ──> (ended slots, activations replacing them)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._policy import Activation

BLOCK = 256
"""Rows of stream choices drawn at a time; fixed so that every driver draws the same."""


class Walk:
    """A pass over a policy. `max_iter` caps the rows it yields (None: until the policy ends)."""

    def __init__(self, policy: Any, max_iter: int | None, saving: bool = False) -> None:
        self.policy = policy
        self.remaining = max_iter
        self.saving = saving
        self.choices: np.ndarray | None = None
        self.block = 0
        self.drawn_from: dict[str, Any] | None = None

    def start(self) -> list[Activation]:
        return self.policy.start()

    def draw(self, cap: Callable[[int], int] | None = None) -> np.ndarray | None:
        """The active slot of each of the next rows (cut after a budget runs out); None when the pass is over."""
        n = BLOCK if self.remaining is None else min(BLOCK, self.remaining)
        if n <= 0:
            return None
        if cap is not None:
            n = cap(n)
        if self.saving:
            self.drawn_from = self.policy.get_state()
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

    def get_state(self) -> dict[str, Any]:
        """Where the walk stands: the policy before the current block was drawn, and that block's size."""
        current = self.choices is not None
        policy = self.drawn_from if current else self.policy.get_state()
        return {"policy": policy, "block": self.block if current else None, "remaining": self.remaining}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a get_state of a walk over the same mux: the current block is drawn again."""
        self.policy.set_state(state["policy"])
        self.remaining = state["remaining"]
        self.choices = None
        if state["block"] is not None:
            self.drawn_from = state["policy"]
            self.choices, self.block = self.policy.choose(state["block"]), state["block"]

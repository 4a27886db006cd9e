"""Helpers for testing code built on prefetch."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ._pool import Pool


def _snapshot(batch: Any) -> dict[str, Any]:
    fields = {key: np.array(value) if isinstance(value, np.ndarray) else list(value) for key, value in batch.items()}
    return {"epoch": batch.epoch, "index": batch.index, "size": batch.size, "fields": fields}


def take(pool: Pool, count: int) -> list[dict[str, Any]]:
    """Copies of the next `count` batches, across epochs.

    A pass that yields nothing is the end of an epoch whose last batch was already
    taken; two in a row mean the source is empty, and end the taking.
    """
    out: list[dict[str, Any]] = []
    empty = 0
    while len(out) < count and empty < 2:
        before = len(out)
        for batch in pool:
            out.append(_snapshot(batch))
            del batch
            if len(out) == count:
                break
        empty = empty + 1 if len(out) == before else 0
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if (a["epoch"], a["index"], a["size"]) != (b["epoch"], b["index"], b["size"]):
        return False
    if a["fields"].keys() != b["fields"].keys():
        return False
    for key, value in a["fields"].items():
        other = b["fields"][key]
        if isinstance(value, np.ndarray):
            if value.dtype != other.dtype or value.shape != other.shape or value.tobytes() != other.tobytes():
                return False
        elif value != other:
            return False
    return True


def assert_resumes_exactly(make_pool: Callable[..., Pool], steps: Iterable[int], after: int = 4) -> None:
    """Assert that a pool resumed from a checkpoint continues with exactly the batches of an uninterrupted run.

    `make_pool(state=None)` builds the pool (the same way every time). For each number
    of batches in `steps`, a pool is run that far, its `state_dict()` goes through JSON,
    and a new pool built with it must yield, byte for byte, the `after` batches the
    uninterrupted run yields next (epochs, indices and sizes included).
    """
    steps = sorted(set(steps))
    with make_pool() as pool:
        reference = take(pool, steps[-1] + after)
    for step in steps:
        with make_pool() as pool:
            take(pool, step)
            state = json.loads(json.dumps(pool.state_dict()))
        with make_pool(state=state) as pool:
            resumed = take(pool, after)
        expected = reference[step:step + after]
        if len(resumed) != len(expected):
            raise AssertionError(f"resumed after {step} batches: got {len(resumed)} batches, expected {len(expected)}")
        for offset, (got, want) in enumerate(zip(resumed, expected, strict=True)):
            if not _same(got, want):
                raise AssertionError(f"resumed after {step} batches: batch {step + offset} differs "
                                     f"(epoch {got['epoch']} index {got['index']} vs epoch {want['epoch']} "
                                     f"index {want['index']})")

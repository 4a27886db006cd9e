"""Which data points a query selects and in which phase: stable hashes of key (or group) and seed.

Phase and sampling use independent hashes, so changing `@sample` never moves a data
point from one phase to another, and adding data in a later version never moves the
data points already there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .query import Query

PHASES = ("train", "test", "validation")


@dataclass(frozen=True)
class DataPoint:
    """One data point of a volume: its id, metadata, and files (name -> {"sha256", "size"})."""

    id: str
    metadata: dict[str, Any] = field(hash=False)
    files: dict[str, dict[str, Any]] = field(hash=False)
    phase: str | None = None


def unit(seed: int, purpose: str, key: str) -> float:
    """A number in [0, 1) fixed by (seed, purpose, key)."""
    digest = hashlib.blake2b(f"{seed}\0{purpose}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def group_of(point_key: str, metadata: dict[str, Any], group_by: str | None) -> str:
    """The key that phase and sampling hash: the data point's id, or its `@group_by` field's value."""
    if group_by is None:
        return "id:" + point_key
    value: Any = metadata
    for part in group_by.split("."):
        if not isinstance(value, dict) or part not in value:
            return "id:" + point_key
        value = value[part]
    return "group:" + json.dumps(value, sort_keys=True)


def phase_of(fractions: tuple[float, float, float], u: float) -> str | None:
    edge = 0.0
    for name, fraction in zip(PHASES, fractions, strict=True):
        edge += fraction
        if u < edge:
            return name
    return None


def select(rows: Iterable[tuple[str, str, str]], query: Query) -> Iterator[DataPoint]:
    """The data points of (key, metadata json, files json) rows (ordered by key) that the query keeps."""
    kept = 0
    for key, meta_json, files_json in rows:
        metadata = json.loads(meta_json) if query.group_by is not None else None
        group = group_of(key, metadata, query.group_by) if metadata is not None else "id:" + key
        if query.sample is not None and unit(query.seed, "sample", group) >= query.sample:
            continue
        phase = None
        if query.split is not None:
            phase = phase_of(query.split, unit(query.seed, "phase", group))
            if phase is None:
                continue
        yield DataPoint(key, metadata if metadata is not None else json.loads(meta_json), json.loads(files_json),
                        phase)
        kept += 1
        if query.limit is not None and kept >= query.limit:
            return

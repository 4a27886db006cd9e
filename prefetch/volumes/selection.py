"""Which data points a query selects and in which phase: stable hashes of key (or group) and seed.

Phase and sampling use independent hashes, so changing `@sample` never moves a data
point from one phase to another, and adding data in a later version never moves the
data points already there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import VolumeError
from .names import check_hash, check_name
from .query import Query

PHASES = ("train", "test", "validation")


class DataPoint:
    """One data point of a volume: its id, metadata, files (name -> {"sha256", "size"}) and phase.

    Metadata and files are decoded from the index's JSON on first use, so selecting a
    million data points does not decode a million dicts nobody reads.
    """

    __slots__ = ("_files", "_files_json", "_metadata", "_metadata_json", "id", "phase")

    def __init__(self, id: str, metadata_json: str, files_json: str, phase: str | None = None) -> None:
        self.id, self.phase = id, phase
        self._metadata_json, self._files_json = metadata_json, files_json
        self._metadata: dict[str, Any] | None = None
        self._files: dict[str, dict[str, Any]] | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            metadata = json.loads(self._metadata_json)
            if not isinstance(metadata, dict):
                raise VolumeError(f"data point {self.id!r:.100}: its metadata in the index is not an object")
            self._metadata = metadata
        return self._metadata

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """name -> {"sha256", "size"}, each checked: the index may come from an untrusted server."""
        if self._files is None:
            self._files = _checked_files(self.id, json.loads(self._files_json))
        return self._files

    def __getstate__(self) -> tuple[str, str, str, str | None]:
        return self.id, self._metadata_json, self._files_json, self.phase

    def __setstate__(self, state: tuple[str, str, str, str | None]) -> None:
        self.__init__(*state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataPoint) and (self.id, self.phase, self._metadata_json, self._files_json) == (
            other.id, other.phase, other._metadata_json, other._files_json)

    def __hash__(self) -> int:
        return hash((self.id, self.phase))

    def __repr__(self) -> str:
        return f"DataPoint({self.id!r}, phase={self.phase!r}, files={sorted(self.files)})"


def _checked_files(point: str, files: Any) -> dict[str, dict[str, Any]]:
    where = f"data point {point!r:.100}"
    if not isinstance(files, dict) or not files:
        raise VolumeError(f"{where}: its files in the index are not a non-empty object")
    for name, info in files.items():
        check_name(name, f"{where}: file name")
        if not isinstance(info, dict):
            raise VolumeError(f"{where}, file {name!r}: expected {{'sha256', 'size'}}, got {info!r:.100}")
        check_hash(info.get("sha256"), f"{where}, file {name!r}")
        size = info.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise VolumeError(f"{where}, file {name!r}: size must be an integer >= 0, got {size!r:.100}")
    return files


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
        group = "id:" + key if query.group_by is None else group_of(key, json.loads(meta_json), query.group_by)
        if query.sample is not None and unit(query.seed, "sample", group) >= query.sample:
            continue
        phase = None
        if query.split is not None:
            phase = phase_of(query.split, unit(query.seed, "phase", group))
            if phase is None:
                continue
        yield DataPoint(key, meta_json, files_json, phase)
        kept += 1
        if query.limit is not None and kept >= query.limit:
            return

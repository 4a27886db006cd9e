"""Volumes: create, add, commit and query locally; open read-only from file://, http(s):// or s3://.

On disk a volume is a folder: `objects/ab/cdef...` holds every file once, by SHA-256,
and `index.sqlite` the metadata index. Serving that folder with any static file
server makes it readable over HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._sizes import parse_size
from . import remote
from .cache import Cache, Held, default_cache_dir, sha256_of
from .errors import CorruptIndexError, VolumeError
from .index import Index, check_index_file, check_metadata
from .names import check_hash, check_name
from .query import Query, parse
from .selection import DataPoint, select

INDEX = "index.sqlite"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a volume's files come from; small and picklable, so that workers can fetch files themselves.

    Attributes:
        url: a local folder, or an http(s):// or s3:// address of one.
        cache_dir: the local cache for remote files.
        cache_limit: bytes the cache may hold (None: no limit).
    """

    url: str
    cache_dir: str | None = None
    cache_limit: int | None = None

    @property
    def local(self) -> bool:
        return "://" not in self.url

    def read(self, relative: str) -> Iterator[bytes]:
        """The bytes of `relative` (a path inside the volume), in chunks; remote reads are retried."""
        if self.local:
            with open(Path(self.url) / relative, "rb") as f:
                yield from iter(lambda: f.read(CHUNK), b"")
        else:
            yield from remote.chunks(f"{self.url.rstrip('/')}/{relative}")

    def cache(self) -> Cache:
        return Cache(Path(self.cache_dir) if self.cache_dir else default_cache_dir(), self.cache_limit)

    def hold(self, sha: str, size: int, cache: Cache | None = None) -> Held:
        """The file with this SHA-256 and size, fetched into the cache if it is remote, and kept there
        (whatever other processes evict) until the result is released.

        A local volume's object that is missing or of the wrong size is a damaged volume
        (VolumeError); a damaged cached one is fetched again (see Cache.hold).
        """
        check_hash(sha, "Source.hold")
        relative = f"objects/{sha[:2]}/{sha[2:]}"
        if not self.local:
            return (cache or self.cache()).hold(sha, size, lambda: self.read(relative))
        path = Path(self.url) / relative
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise VolumeError(f"{self.url}: object {sha[:12]}... is missing; the volume is damaged") from None
        if actual != size:
            raise VolumeError(f"{self.url}: object {sha[:12]}... holds {actual} bytes, the index says {size}; "
                              "the volume is damaged")
        return Held(path)

    def file(self, sha: str, size: int, cache: Cache | None = None) -> Path:
        """A local path of the file (see `hold`); another process may evict a cached one once it is returned."""
        held = self.hold(sha, size, cache)
        held.release()
        return held.path


def _store(source: Path, objects: Path) -> tuple[str, int]:
    """Copy a file into the object store under its SHA-256, hashing the bytes it copies; (hash, size).

    The copy goes to a name no other process uses and is renamed into place only
    under the hash of the bytes actually copied, so a file that changes while it is
    added, or two processes adding the same file, never leave a wrong object.
    """
    fd, temp = tempfile.mkstemp(dir=objects, prefix=".add-", suffix=".part")
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, open(source, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        target = objects / sha[:2] / sha[2:]
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            with open(target, "rb") as existing:
                if sha256_of(existing) == sha:
                    return sha, size
        os.chmod(temp, 0o644)
        os.replace(temp, target)
        return sha, size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _fetch_index(source: Source, cached: Path) -> None:
    """Download the index next to `cached` and replace it only once the download is a sound volume index."""
    fd, temp = tempfile.mkstemp(dir=cached.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in source.read(INDEX):
                out.write(chunk)
        check_index_file(Path(temp))
        os.replace(temp, cached)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class QueryResult:
    """The data points a query selected: `train`, `test`, `validation`, and all of them by iteration."""

    def __init__(self, query: Query, version: str, points: list[DataPoint]) -> None:
        self.query, self.version, self.points = query, version, points

    def phase(self, name: str) -> list[DataPoint]:
        return [p for p in self.points if p.phase == name]

    @property
    def train(self) -> list[DataPoint]:
        return self.phase("train")

    @property
    def test(self) -> list[DataPoint]:
        return self.phase("test")

    @property
    def validation(self) -> list[DataPoint]:
        return self.phase("validation")

    def __iter__(self) -> Iterator[DataPoint]:
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)


class Volume:
    """A versioned collection of data points (files plus metadata)."""

    def __init__(self, source: Source, index_path: Path, writable: bool) -> None:
        self.source = source
        self.writable = writable
        self.index = Index(index_path, readonly=not writable)

    @classmethod
    def init(cls, path: str | os.PathLike) -> Volume:
        """Create an empty local volume in a new (or empty) folder."""
        root = Path(path)
        if root.exists() and any(root.iterdir()):
            raise VolumeError(f"{root} exists and is not empty; a volume needs a folder of its own")
        (root / "objects").mkdir(parents=True, exist_ok=True)
        return cls(Source(str(root.resolve())), root / INDEX, writable=True)

    @classmethod
    def open(cls, url: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
             cache_limit: int | str | None = None) -> Volume:
        """Open a volume: a local folder or file:// (read and write), http(s):// or s3:// (read only).

        A remote volume's index is fetched into the cache on every open; when the source
        is unreachable, the cached index is used, so versions read before stay readable.
        """
        text = str(url)
        if text.startswith("file://"):
            text = text[len("file://"):]
        source = Source(text if "://" in text else str(Path(text).resolve()),
                        None if cache_dir is None else str(cache_dir), parse_size(cache_limit))
        if source.local:
            if not (Path(source.url) / INDEX).exists():
                raise VolumeError(f"{source.url} is not a volume (no {INDEX}); create one with Volume.init")
            return cls(source, Path(source.url) / INDEX, writable=True)
        cached = source.cache().root / "indexes" / (hashlib.sha1(source.url.encode()).hexdigest() + ".sqlite")
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            _fetch_index(source, cached)
        except VolumeError as exc:
            if not cached.exists():
                raise
            if isinstance(exc, CorruptIndexError):
                warnings.warn(f"Volume.open: the index served by {source.url} is not sound ({exc}); using the "
                              f"copy cached {time.ctime(cached.stat().st_mtime)}", RuntimeWarning, stacklevel=2)
        return cls(source, cached, writable=False)

    def _need_writable(self) -> None:
        if not self.writable:
            raise VolumeError(f"{self.source.url} is opened read only; write to a local copy (prefetch volume clone)")

    def add(self, files: Mapping[str, str | os.PathLike], metadata: dict[str, Any] | None = None,
            id: str | None = None) -> str:
        """Stage a data point: its files (name -> local path) are stored once, by content. Returns its id."""
        self._need_writable()
        if not files:
            raise VolumeError("a data point needs at least one file")
        if id is not None:
            check_name(id, "Volume.add: id")
        for name in files:
            check_name(name, "Volume.add: file name")
        meta = {} if metadata is None else metadata
        check_metadata(str(id), meta)
        stored = {}
        for name, path in files.items():
            sha, size = _store(Path(path), Path(self.source.url) / "objects")
            stored[name] = {"sha256": sha, "size": size}
        if id is None:
            id = hashlib.sha1("".join(f"{n}:{f['sha256']}" for n, f in sorted(stored.items())).encode()).hexdigest()
        self.index.stage(id, meta, stored)
        return id

    def transaction(self) -> Any:
        """`with volume.transaction():` stages every add inside it at once (fast for many data points)."""
        self._need_writable()
        return self.index.transaction()

    def commit(self, message: str) -> str:
        """Make what is staged an immutable version; returns its 40-hex id."""
        self._need_writable()
        return self.index.commit(message)

    def log(self) -> list[dict[str, Any]]:
        """Versions, newest first: id, parent, message, created (epoch seconds), count."""
        return self.index.log()

    def query(self, text: str | Query) -> QueryResult:
        """The data points the query selects, with their phase when it has @split."""
        query = text if isinstance(text, Query) else parse(text)
        rows = self.index.select(query.version, query.filter, query.path)
        return QueryResult(query, self.index.version_id(query.version), list(select(rows, query)))

    def file(self, point: DataPoint, name: str) -> Path:
        """A local path of one of a data point's files (fetched into the cache for a remote volume)."""
        info = point.files[name]
        return self.source.file(info["sha256"], info["size"])

    def files(self, point: DataPoint) -> dict[str, Path]:
        return {name: self.file(point, name) for name in sorted(point.files)}

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Volume({self.source.url!r})"

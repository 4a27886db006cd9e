"""Volumes: create, add, commit and query locally; open read-only from file://, http(s):// or s3://.

On disk a volume is a folder: `objects/ab/cdef...` holds every file once, by SHA-256,
and `index.sqlite` the metadata index. Serving that folder with any static file
server makes it readable over HTTP.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import Cache, default_cache_dir, parse_size
from .index import Index, VolumeError
from .query import Query, parse
from .selection import DataPoint, select

INDEX = "index.sqlite"
CHUNK = 1 << 20
TIMEOUT_S = 30


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
        """The bytes of `relative` (a path inside the volume), in chunks."""
        if self.local:
            with open(Path(self.url) / relative, "rb") as f:
                yield from iter(lambda: f.read(CHUNK), b"")
        elif self.url.startswith("s3://"):
            yield from _s3_read(self.url, relative)
        else:
            try:
                with urllib.request.urlopen(f"{self.url.rstrip('/')}/{relative}", timeout=TIMEOUT_S) as response:
                    yield from iter(lambda: response.read(CHUNK), b"")
            except (urllib.error.URLError, OSError) as exc:
                raise VolumeError(f"cannot read {relative} from {self.url}: {exc}") from exc

    def cache(self) -> Cache:
        return Cache(Path(self.cache_dir) if self.cache_dir else default_cache_dir(), self.cache_limit)

    def file(self, sha: str, cache: Cache | None = None) -> Path:
        """A local path holding the file with this SHA-256, fetched into the cache if it is remote."""
        relative = f"objects/{sha[:2]}/{sha[2:]}"
        if self.local:
            return Path(self.url) / relative
        return (cache or self.cache()).get(sha, lambda: self.read(relative))


def _s3_read(url: str, relative: str) -> Iterator[bytes]:
    try:
        import boto3
    except ImportError as exc:
        raise VolumeError("s3:// volumes need boto3: pip install 'prefetch[s3]'") from exc
    bucket, _, prefix = url[len("s3://"):].partition("/")
    key = f"{prefix.rstrip('/')}/{relative}" if prefix else relative
    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:
        raise VolumeError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    yield from iter(lambda: body.read(CHUNK), b"")


def _hash_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


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
            fd, temp = tempfile.mkstemp(dir=cached.parent, suffix=".part")
            with os.fdopen(fd, "wb") as out:
                for chunk in source.read(INDEX):
                    out.write(chunk)
            os.replace(temp, cached)
        except VolumeError:
            Path(temp).unlink(missing_ok=True)
            if not cached.exists():
                raise
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
        stored = {}
        for name, path in files.items():
            sha, size = _hash_file(Path(path))
            target = Path(self.source.url) / "objects" / sha[:2] / sha[2:]
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                temp = target.with_name(f".{target.name}.part")
                shutil.copyfile(path, temp)
                os.replace(temp, target)
            stored[str(name)] = {"sha256": sha, "size": size}
        if id is None:
            id = hashlib.sha1("".join(f"{n}:{f['sha256']}" for n, f in sorted(stored.items())).encode()).hexdigest()
        self.index.stage(str(id), dict(metadata or {}), stored)
        return str(id)

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
        query = parse(text) if isinstance(text, str) else text
        rows = self.index.select(query.version, query.filter, query.path)
        return QueryResult(query, self.index.version_id(query.version), list(select(rows, query)))

    def file(self, point: DataPoint, name: str) -> Path:
        """A local path of one of a data point's files (fetched into the cache for a remote volume)."""
        return self.source.file(point.files[name]["sha256"])

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

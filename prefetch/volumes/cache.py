"""The local file cache: content-addressed, verified, written atomically, shared, least recently used out."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from .._errors import ArgumentError
from .index import VolumeError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}


def default_cache_dir() -> Path:
    """$PREFETCH_CACHE, else $XDG_CACHE_HOME/prefetch, else ~/.cache/prefetch."""
    if os.environ.get("PREFETCH_CACHE"):
        return Path(os.environ["PREFETCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prefetch"


def parse_size(limit: int | str | None) -> int | None:
    """Bytes from an int or a string such as "500MB" or "2GiB"; None for no limit."""
    if limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
        return limit
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B?)\s*", str(limit).upper())
    if m is None or isinstance(limit, bool):
        raise ArgumentError(f"cache_limit must be a positive number of bytes or a size like '500MB', got {limit!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


class Cache:
    """Files by SHA-256 under `root/objects`, safe to share between processes and pools.

    A file is written to a private temporary name, verified against its hash and then
    renamed into place, so a reader never sees a partial file; two processes fetching
    the same file both succeed. Past `limit` bytes, the files read longest ago go.
    """

    def __init__(self, root: Path, limit: int | None = None) -> None:
        self.root = Path(root)
        self.limit = limit
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.added = 0

    def path(self, sha: str) -> Path:
        return self.objects / sha[:2] / sha[2:]

    def get(self, sha: str, fetch: Callable[[], Iterable[bytes]]) -> Path:
        """The local path of a file, fetching it (as chunks of bytes) if it is not cached."""
        target = self.path(sha)
        try:
            os.utime(target)
            return target
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(temp, "wb") as out:
                for chunk in fetch():
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if digest.hexdigest() != sha:
                raise VolumeError(f"file {sha[:12]}... arrived corrupted (its SHA-256 is {digest.hexdigest()[:12]}...)")
            os.replace(temp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        self.added += size
        if self.limit is not None and self.added > self.limit // 10:
            self.evict(keep=target)
        return target

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently read files until the cache holds at most `limit` bytes."""
        self.added = 0
        entries = []
        for sub in self.objects.iterdir():
            for entry in os.scandir(sub):
                if entry.is_file() and not entry.name.startswith("."):
                    stat = entry.stat()
                    entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit:
                break
            if path != keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                total -= size
